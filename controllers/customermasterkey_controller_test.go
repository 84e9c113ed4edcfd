package controllers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// TestSeedOutcomes walks the seed: a KMS key and an External key without material are
// scheduled for deletion and canceled; the first comes back Disabled, the second PendingImport,
// and enabling is a separate step.
func TestSeedOutcomes(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("generated"), h.cmk("byok", testenv.External))

	gen := h.waitPhase("generated", v1alpha1.PhaseEnabled)
	if c := cond(gen, v1alpha1.ConditionReady); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonAvailable {
		t.Errorf("Ready of an enabled key: %+v", c)
	}
	byok := h.waitPhase("byok", v1alpha1.PhasePendingImport)
	if c := cond(byok, v1alpha1.ConditionReady); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonPendingImport {
		t.Errorf("Ready of a key without material: %+v", c)
	}

	for _, name := range []string{"generated", "byok"} {
		h.patch(name, schedule)
		c := h.waitPhase(name, v1alpha1.PhasePendingDeletion)
		want := h.clock.Now().Add(7 * 24 * time.Hour)
		if c.Status.DeletionDate == nil || c.Status.DeletionDate.Sub(want).Abs() > time.Second {
			t.Errorf("%s: deletionDate %v, want %v", name, c.Status.DeletionDate, want)
		}
		if r := cond(c, v1alpha1.ConditionReady); r.Reason != v1alpha1.ReasonPendingDeletion {
			t.Errorf("%s: Ready reason %s, want PendingDeletion", name, r.Reason)
		}
		h.patch(name, cancel)
	}
	gen = h.waitPhase("generated", v1alpha1.PhaseDisabled)
	byok = h.waitPhase("byok", v1alpha1.PhasePendingImport)
	for _, c := range []*v1alpha1.CustomerMasterKey{gen, byok} {
		if c.Status.DeletionDate != nil {
			t.Errorf("%s: deletionDate %v kept after the cancel", c.Name, c.Status.DeletionDate)
		}
	}
	if h.kmsState(gen.Status.KeyID) != kms.StateDisabled || h.kmsState(byok.Status.KeyID) != kms.StatePendingImport {
		t.Error("the KMS does not agree with status")
	}
	NewWithT(t).Eventually(func() []string { return h.events("generated") }).WithTimeout(timeout).Should(
		ContainElements(v1alpha1.EventCreated, v1alpha1.EventDeletionScheduled, v1alpha1.EventDeletionCanceled))

	// Enabling is explicit; a key with no material cannot be enabled and says so, without errors.
	h.patch("generated", enable)
	h.patch("byok", enable)
	h.waitPhase("generated", v1alpha1.PhaseEnabled)
	byok = h.waitPhase("byok", v1alpha1.PhasePendingImport)
	if r, s := cond(byok, v1alpha1.ConditionReady), cond(byok, v1alpha1.ConditionSynced); r.Reason != v1alpha1.ReasonPendingImport || s.Status != metav1.ConditionTrue {
		t.Errorf("enabled: true on a key without material: Ready %+v, Synced %+v; want a wait, not an error", r, s)
	}
}

// TestManyKeysByLabel schedules and cancels the deletion of a group of keys by label, the
// second time with kubectl exactly as the README shows.
func TestManyKeysByLabel(t *testing.T) {
	t.Parallel()
	const n = 24
	h := newHarness(t)
	h.start(managerOptions{})
	for i := range n {
		h.create(h.cmk(fmt.Sprintf("payments-%02d", i), func(c *v1alpha1.CustomerMasterKey) {
			c.Labels = map[string]string{"team": "payments"}
		}))
	}
	h.create(h.cmk("other"))
	names := func() []string {
		var list v1alpha1.CustomerMasterKeyList
		if err := env.Client.List(context.Background(), &list, client.InNamespace(h.ns), client.MatchingLabels{"team": "payments"}); err != nil {
			t.Fatal(err)
		}
		out := make([]string, 0, len(list.Items))
		for _, c := range list.Items {
			out = append(out, c.Name)
		}
		return out
	}
	for _, name := range names() {
		h.waitPhase(name, v1alpha1.PhaseEnabled)
		h.patch(name, schedule)
	}
	for _, name := range names() {
		h.waitPhase(name, v1alpha1.PhasePendingDeletion)
	}

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.KubeConfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	kubectl := filepath.Join(env.Assets, "kubectl")
	script := fmt.Sprintf(`%[1]s get cmk -n %[2]s -l team=payments -o name | xargs %[1]s patch -n %[2]s --type merge -p '{"spec":{"deletionScheduled":false}}'`, kubectl, h.ns)
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl: %v\n%s", err, out)
	}
	for _, name := range names() {
		h.waitPhase(name, v1alpha1.PhaseDisabled)
	}
	if c := h.get("other"); c.Status.Phase != v1alpha1.PhaseEnabled {
		t.Errorf("a key outside the selector is %s", c.Status.Phase)
	}
	if got := h.keySecrets(); got != n+1 {
		t.Errorf("%d keys in the KMS, want %d", got, n+1)
	}
}

// TestRestartLosesNothing stops the manager with keys in every phase, changes specs while it
// is down, and starts a new manager with a new provider instance on the same KMS.
func TestRestartLosesNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("a"), h.cmk("b"), h.cmk("c", testenv.External))
	h.waitPhase("a", v1alpha1.PhaseEnabled)
	h.waitPhase("b", v1alpha1.PhaseEnabled)
	h.waitPhase("c", v1alpha1.PhasePendingImport)
	h.patch("b", schedule)
	h.patch("c", schedule)
	ids := map[string]string{}
	for _, name := range []string{"a", "b", "c"} {
		want := v1alpha1.PhaseEnabled
		if name != "a" {
			want = v1alpha1.PhasePendingDeletion
		}
		ids[name] = h.waitPhase(name, want).Status.KeyID
	}
	h.stopManager()

	// While the operator is down: cancel both deletions, disable a, and add a new key.
	h.patch("a", map[string]any{"enabled": false})
	h.patch("b", cancel)
	h.patch("c", cancel)
	h.create(h.cmk("d"))

	h.kms = h.newProvider(env.Client)
	h.start(managerOptions{})
	h.waitPhase("a", v1alpha1.PhaseDisabled)
	h.waitPhase("b", v1alpha1.PhaseDisabled)
	h.waitPhase("c", v1alpha1.PhasePendingImport)
	h.waitPhase("d", v1alpha1.PhaseEnabled)
	for name, id := range ids {
		if got := h.get(name).Status.KeyID; got != id {
			t.Errorf("%s: keyID %s after restart, was %s", name, got, id)
		}
	}
	if got := h.keySecrets(); got != 4 {
		t.Errorf("%d keys in the KMS after restart, want 4", got)
	}
}

// TestCrashBetweenCreateAndStatusWrite loses the first status write after a key is created,
// as a crash would, and checks the next reconcile finds the same key rather than making one.
func TestCrashBetweenCreateAndStatusWrite(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var failed atomic.Bool
	h.start(managerOptions{wrap: losingStatusWrites(func(*v1alpha1.CustomerMasterKey) bool { return failed.CompareAndSwap(false, true) })})
	h.create(h.cmk("once"))
	c := h.waitPhase("once", v1alpha1.PhaseEnabled)
	if !failed.Load() {
		t.Fatal("the status write was never failed: the test proves nothing")
	}
	if got := h.keySecrets(); got != 1 {
		t.Errorf("%d keys in the KMS, want 1", got)
	}
	if c.Status.KeyID == "" {
		t.Error("no keyID in status")
	}
}

// TestDeletionDateReached moves the clock past the deletion date: the embedded KMS deletes the
// key, the resource reports Deleted at once, and no new key is ever made for it.
func TestDeletionDateReached(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("doomed"))
	h.waitPhase("doomed", v1alpha1.PhaseEnabled)
	h.patch("doomed", schedule)
	id := h.waitPhase("doomed", v1alpha1.PhasePendingDeletion).Status.KeyID

	h.clock.Step(7*24*time.Hour + time.Second)
	c := h.waitPhase("doomed", v1alpha1.PhaseDeleted)
	if r := cond(c, v1alpha1.ConditionReady); r.Reason != v1alpha1.ReasonKeyDeleted {
		t.Errorf("Ready after deletion: %+v", r)
	}
	if c.Status.DeletionDate != nil {
		t.Errorf("deletionDate %v kept on a deleted key", c.Status.DeletionDate)
	}
	NewWithT(t).Eventually(func() []string { return h.events("doomed") }).WithTimeout(timeout).Should(ContainElement(v1alpha1.EventDeleted))

	// Too late to cancel, and asking to enable changes nothing: Deleted is terminal.
	h.patch("doomed", map[string]any{"deletionScheduled": false, "enabled": true})
	c = h.waitPhase("doomed", v1alpha1.PhaseDeleted)
	if c.Status.KeyID != id || h.keySecrets() != 1 || h.kmsState(id) != kms.StateDeleted {
		t.Errorf("after asking a deleted key back: keyID %s (was %s), %d keys in the KMS", c.Status.KeyID, id, h.keySecrets())
	}
	if n := countOf(h.events("doomed"), v1alpha1.EventCreated); n != 1 {
		t.Errorf("%d Created events, want 1: %v", n, h.events("doomed"))
	}
}

// withoutWatch lets interceptor wrap the manager's client, which has no Watch.
type withoutWatch struct{ client.Client }

func (withoutWatch) Watch(context.Context, client.ObjectList, ...client.ListOption) (watch.Interface, error) {
	return nil, errors.New("watch is not supported here")
}

func countOf(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// TestResourceDeletion deletes resources under each deletionPolicy: the resource goes at once,
// and the key is left alone, or scheduled for deletion, in the KMS.
func TestResourceDeletion(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	policy := func(p v1alpha1.DeletionPolicy) func(*v1alpha1.CustomerMasterKey) {
		return func(c *v1alpha1.CustomerMasterKey) { c.Spec.DeletionPolicy = p }
	}
	h.create(h.cmk("retain"), h.cmk("delete", policy(v1alpha1.DeletionPolicyDelete)),
		h.cmk("pending", policy(v1alpha1.DeletionPolicyDelete)))
	ids := map[string]string{}
	for _, name := range []string{"retain", "delete", "pending"} {
		c := h.waitPhase(name, v1alpha1.PhaseEnabled)
		if len(c.Finalizers) != 1 || c.Finalizers[0] != Finalizer {
			t.Errorf("%s: finalizers %v", name, c.Finalizers)
		}
		ids[name] = c.Status.KeyID
	}
	h.patch("pending", schedule)
	pendingDate := h.waitPhase("pending", v1alpha1.PhasePendingDeletion).Status.DeletionDate

	for name, want := range map[string]kms.State{"retain": kms.StateEnabled, "delete": kms.StatePendingDeletion, "pending": kms.StatePendingDeletion} {
		if err := env.Client.Delete(context.Background(), h.get(name)); err != nil {
			t.Fatal(err)
		}
		NewWithT(t).Eventually(func() bool {
			err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: h.ns, Name: name}, &v1alpha1.CustomerMasterKey{})
			return apierrors.IsNotFound(err)
		}).WithTimeout(timeout).Should(BeTrue(), "%s was not let go", name)
		if got := h.kmsState(ids[name]); got != want {
			t.Errorf("%s: key is %s after the resource was deleted, want %s", name, got, want)
		}
	}
	k, err := h.kms.Observe(context.Background(), ids["pending"])
	if err != nil || !k.DeletionDate.Equal(pendingDate.Time) {
		t.Errorf("deleting a resource moved the deletion date of a key already pending: %v, was %v (%v)", k.DeletionDate, pendingDate, err)
	}
}

// TestDriftCorrected changes keys outside Kubernetes and checks the resync puts them back
// toward the spec, with an event saying so.
func TestDriftCorrected(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{syncPeriod: 300 * time.Millisecond})
	h.create(h.cmk("disabled-outside"), h.cmk("scheduled-outside"))
	a := h.waitPhase("disabled-outside", v1alpha1.PhaseEnabled).Status.KeyID
	b := h.waitPhase("scheduled-outside", v1alpha1.PhaseEnabled).Status.KeyID
	ctx := context.Background()
	if err := h.kms.Disable(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := h.kms.ScheduleDeletion(ctx, b, 7); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(h.kmsState(a)).To(Equal(kms.StateEnabled))
		// Canceled, then enabled again, as spec.enabled asks.
		g.Expect(h.kmsState(b)).To(Equal(kms.StateEnabled))
	}).WithTimeout(timeout).Should(Succeed())
	for _, name := range []string{"disabled-outside", "scheduled-outside"} {
		h.waitPhase(name, v1alpha1.PhaseEnabled)
		NewWithT(t).Eventually(func() []string { return h.events(name) }).WithTimeout(timeout).Should(
			ContainElement(v1alpha1.EventDriftDetected), name)
	}
}

// TestChangeByAnotherProcessSeenAtOnce changes a key through another embedded provider on the
// same KMS namespace (a person, a previous leader): the manager's provider, which answers from
// its view of the key Secrets, learns of it from its watch and has the key reconciled at once,
// with no resync due for an hour.
func TestChangeByAnotherProcessSeenAtOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{syncPeriod: time.Hour})
	h.create(h.cmk("changed-elsewhere"))
	id := h.waitPhase("changed-elsewhere", v1alpha1.PhaseEnabled).Status.KeyID
	elsewhere := h.newProvider(env.Client)
	if err := elsewhere.Disable(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func() []string { return h.events("changed-elsewhere") }).WithTimeout(timeout).Should(
		ContainElement(v1alpha1.EventDriftDetected))
	NewWithT(t).Eventually(func() kms.State { return h.kmsState(id) }).WithTimeout(timeout).Should(Equal(kms.StateEnabled))
}

// TestTerminalFailures checks that a spec the provider cannot serve, or the KMS refuses, is
// reported in conditions and events once, and not retried in a loop.
func TestTerminalFailures(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("sm2", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.KeySpec, c.Spec.KeyUsage = v1alpha1.KeySpecSM2, v1alpha1.KeyUsageSignVerify
	}))
	h.create(h.cmk("first", func(c *v1alpha1.CustomerMasterKey) { c.Spec.Alias = "team/shared" }))
	h.waitPhase("first", v1alpha1.PhaseEnabled)
	h.create(h.cmk("second", func(c *v1alpha1.CustomerMasterKey) { c.Spec.Alias = "team/shared" }))

	for name, reason := range map[string]string{"sm2": v1alpha1.ReasonUnsupported, "second": v1alpha1.ReasonAliasInUse} {
		c := h.eventually(name, func(g Gomega, c *v1alpha1.CustomerMasterKey) {
			g.Expect(cond(c, v1alpha1.ConditionSynced).Reason).To(Equal(reason))
		})
		if c.Status.ObservedGeneration != c.Generation || cond(c, v1alpha1.ConditionReady).Status != metav1.ConditionFalse {
			t.Errorf("%s: %+v", name, c.Status)
		}
		msg := cond(c, v1alpha1.ConditionSynced).Message
		t.Logf("%s: %s", name, msg)
		if name == "sm2" && (strings.Contains(msg, "choose another keySpec") || !strings.Contains(msg, "create a new CustomerMasterKey with another keySpec")) {
			t.Errorf("the SM2 message must not ask to change keySpec, which is immutable: %s", msg)
		}
		rv := c.ResourceVersion
		time.Sleep(2 * time.Second)
		if now := h.get(name); now.ResourceVersion != rv {
			t.Errorf("%s: status kept changing after a terminal failure", name)
		}
		if n := countOf(h.events(name), reason); n != 1 {
			t.Errorf("%s: %d %s events in 2s, want 1 (no retry loop)", name, n, reason)
		}
	}
	if h.keySecrets() != 1 {
		t.Errorf("%d keys in the KMS, want only the first", h.keySecrets())
	}
}

// TestKeyGoneFromKMS removes a key behind the operator's back: the resource reports Deleted and
// no new key is made in its place.
func TestKeyGoneFromKMS(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{syncPeriod: 300 * time.Millisecond})
	h.create(h.cmk("vanishing"))
	id := h.waitPhase("vanishing", v1alpha1.PhaseEnabled).Status.KeyID
	if err := env.Client.DeleteAllOf(context.Background(), &corev1.Secret{}, client.InNamespace(h.kmsNS), client.HasLabels{"kms.cmk.io/embedded-key"}); err != nil {
		t.Fatal(err)
	}
	c := h.waitPhase("vanishing", v1alpha1.PhaseDeleted)
	if c.Status.KeyID != id || cond(c, v1alpha1.ConditionReady).Reason != v1alpha1.ReasonKeyDeleted {
		t.Errorf("status after the key vanished: %+v", c.Status)
	}
	NewWithT(t).Eventually(func() []string { return h.events("vanishing") }).WithTimeout(timeout).Should(ContainElement(v1alpha1.EventDeleted))
	time.Sleep(time.Second)
	if n := h.keySecrets(); n != 0 {
		t.Errorf("%d keys made after the key vanished, want 0", n)
	}
}
