package gitops

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/cli-utils/pkg/object"
	"github.com/fluxcd/pkg/ssa"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

// fluxManager is the ResourceManager Flux's kustomize-controller applies and health-checks
// with: server-side apply under its field manager, and kstatus polling with the default
// status readers (the generic reader, status.Compute, for custom resources).
func fluxManager() *ssa.ResourceManager {
	poller := polling.NewStatusPoller(env.Client, env.Client.RESTMapper(), polling.Options{})
	return ssa.NewResourceManager(env.Client, poller, ssa.Owner{Field: "kustomize-controller", Group: "kustomize.toolkit.fluxcd.io"})
}

// apply applies keys as kustomize-controller does and returns the set to wait for.
func apply(t *testing.T, m *ssa.ResourceManager, keys ...*unstructured.Unstructured) object.ObjMetadataSet {
	t.Helper()
	objs := make([]*unstructured.Unstructured, len(keys))
	for i, k := range keys {
		objs[i] = k.DeepCopy()
	}
	cs, err := m.ApplyAllStaged(t.Context(), objs, ssa.DefaultApplyOptions())
	if err != nil {
		t.Fatal(err)
	}
	return cs.ToObjMetadataSet()
}

const fluxTimeout = 60 * time.Second

func waitOptions(timeout time.Duration) ssa.WaitOptions {
	return ssa.WaitOptions{Interval: 500 * time.Millisecond, Timeout: timeout}
}

// TestFluxWaitsForKeysToReachTheirSpec: keys applied from Git pass Flux's health check once
// the KMS is as the spec asks: enabled, disabled, waiting for material, five created with
// their deletion scheduled (no key made), then keys whose deletion is scheduled from Git.
func TestFluxWaitsForKeysToReachTheirSpec(t *testing.T) {
	t.Parallel()
	ns := withOperator(t, "flux")
	m := fluxManager()

	keys := []*unstructured.Unstructured{
		cmk(ns, "enabled", specEnabled),
		cmk(ns, "disabled", specDisabled),
		cmk(ns, "pending-import", specExternal),
	}
	for i := range 5 {
		keys = append(keys, cmk(ns, fmt.Sprintf("scheduled-%d", i), specScheduled))
	}
	start := time.Now()
	if err := m.WaitForSet(apply(t, m, keys...), waitOptions(fluxTimeout)); err != nil {
		t.Fatalf("keys applied at their spec: %v", err)
	}
	t.Logf("%d keys healthy in %s", len(keys), time.Since(start).Round(time.Millisecond))
	wantPhase(t, ns, map[string]string{"enabled": "Enabled", "disabled": "Disabled", "pending-import": "PendingImport"})

	// The deletion of existing keys scheduled from Git: the new generation is healthy once
	// the keys are PendingDeletion.
	scheduled := []*unstructured.Unstructured{cmk(ns, "enabled", specScheduled), cmk(ns, "disabled", specScheduled)}
	start = time.Now()
	if err := m.WaitForSet(apply(t, m, scheduled...), waitOptions(fluxTimeout)); err != nil {
		t.Fatalf("keys scheduled for deletion from Git: %v", err)
	}
	t.Logf("2 keys scheduled for deletion in %s", time.Since(start).Round(time.Millisecond))
	wantPhase(t, ns, map[string]string{"enabled": "PendingDeletion", "disabled": "PendingDeletion"})
}

func wantPhase(t *testing.T, ns string, want map[string]string) {
	t.Helper()
	for name, phase := range want {
		u := get(t, ns, name)
		if got, _, _ := unstructured.NestedString(u.Object, "status", "phase"); got != phase {
			t.Errorf("%s: healthy in phase %q, want %s; %s", name, got, phase, describe(u))
		}
	}
}

// TestFluxFailsFastOnAMissingKey: a key whose spec.keyID names no key is never healthy: not
// before the operator's first status write (status.observedGeneration is -1 from the CRD), and
// once the operator reports it Stalled, Flux's wait fails at once instead of timing out.
func TestFluxFailsFastOnAMissingKey(t *testing.T) {
	t.Parallel()
	ns := namespace(t, "flux-stalled")
	m := fluxManager()
	keys := []*unstructured.Unstructured{cmk(ns, "missing", specMissing), cmk(ns, "enabled", specEnabled)}
	set := apply(t, m, keys...)
	id := fmt.Sprintf("CustomerMasterKey/%s/missing", ns)

	// No operator yet: what Flux polls right after applying.
	u := get(t, ns, "missing")
	if og, found, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration"); !found || og != -1 {
		t.Errorf("before any status write: status.observedGeneration %d (set: %v), want -1 from the CRD's default", og, found)
	}
	if res, err := status.Compute(u); err != nil || res.Status != status.InProgressStatus {
		t.Errorf("before any status write: kstatus %v (%v), want InProgress", res, err)
	}
	// Not healthy, so the wait ends at its deadline: with Flux's timeout naming the key
	// InProgress, or, on a loaded machine, with the client's rate limiter refusing a poll that
	// would end past it.
	err := m.WaitForSet(set, waitOptions(3*time.Second))
	timedOut := err != nil && strings.Contains(err.Error(), "timeout waiting for") && strings.Contains(err.Error(), id+" status: 'InProgress'")
	if err == nil || !timedOut && !strings.Contains(err.Error(), "would exceed context deadline") {
		t.Fatalf("before any status write: wait returned %v, want a timeout with %s InProgress", err, id)
	}

	operator.Start(t, env, ns, ns+"-kms")
	start := time.Now()
	err = m.WaitForSet(set, waitOptions(fluxTimeout))
	took := time.Since(start)
	t.Logf("wait returned after %s: %v", took.Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("a key with a keyID that names no key passed the health check")
	}
	if !strings.Contains(err.Error(), "failed early due to stalled resources") || !strings.Contains(err.Error(), id+" status: 'Failed'") {
		t.Errorf("wait: %v, want it to fail early with %s Failed", err, id)
	}
	if strings.Contains(err.Error(), "enabled") {
		t.Errorf("wait: %v names the healthy key too", err)
	}
	if took > fluxTimeout/3 {
		t.Errorf("wait failed after %s, want well before the %s timeout", took, fluxTimeout)
	}
	// ssa's error names the resource and its status only; the reason is what kstatus read
	// from the Stalled condition.
	res, err := status.Compute(get(t, ns, "missing"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != status.FailedStatus || len(res.Conditions) != 1 || res.Conditions[0].Type != status.ConditionStalled ||
		res.Conditions[0].Reason != "KeyNotFound" || !strings.Contains(res.Message, missingKeyID) {
		t.Errorf("kstatus of the missing key: %+v, want Failed with Stalled KeyNotFound naming %s", res, missingKeyID)
	}
}
