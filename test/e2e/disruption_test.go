//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

var managerPods = client.MatchingLabels{"app.kubernetes.io/name": "cmk-operator", "app.kubernetes.io/component": "manager"}

// leaseHolder is the pod holding the leader-election Lease, or "" when none does.
func leaseHolder(t *testing.T) string {
	t.Helper()
	lease := &coordinationv1.Lease{}
	err := c.Get(t.Context(), client.ObjectKey{Namespace: operatorNamespace, Name: "cmk-operator.kms.cmk.io"}, lease)
	if err != nil || lease.Spec.HolderIdentity == nil {
		return ""
	}
	pod, _, _ := strings.Cut(*lease.Spec.HolderIdentity, "_") // "<pod>_<uuid>"
	return pod
}

func readyManagers(t *testing.T) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	// Background, not the test's context: scaling back runs in a cleanup, after that ends.
	if err := c.List(context.Background(), &pods, client.InNamespace(operatorNamespace), managerPods); err != nil {
		t.Fatal(err)
	}
	var ready []corev1.Pod
	for _, p := range pods.Items {
		for _, cond := range p.Status.Conditions {
			if p.DeletionTimestamp == nil && cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				ready = append(ready, p)
			}
		}
	}
	return ready
}

func scaleManager(t *testing.T, replicas int32) {
	t.Helper()
	d := &appsv1.Deployment{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: operatorNamespace, Name: "cmk-operator"}, d); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(d.DeepCopy())
	d.Spec.Replicas = &replicas
	if err := c.Patch(context.Background(), d, patch); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(wait); len(readyManagers(t)) != int(replicas); time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			t.Fatalf("%d manager pods ready, want %d", len(readyManagers(t)), replicas)
		}
	}
}

// createKeys makes n keys labeled for the test and waits for them to be Enabled.
func createKeys(t *testing.T, ns string, n int) {
	t.Helper()
	for i := range n {
		k := key(ns, fmt.Sprintf("k%03d", i), testenv.Labels(map[string]string{"bulk": ns}))
		if err := c.Create(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		waitPhase(t, ns, fmt.Sprintf("k%03d", i), v1alpha1.PhaseEnabled)
	}
}

// eventsAtMostOnce checks that no key got two events of this reason: nothing done twice. (Not
// exactly once: a manager stopped with events still unsent loses them, and a key found again by
// its creation token after a lost status write is not created again.)
func eventsAtMostOnce(t *testing.T, ns, reason string, n int) {
	t.Helper()
	var events corev1.EventList
	if err := c.List(t.Context(), &events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	per := map[string]int32{}
	for _, e := range events.Items {
		if e.Reason == reason {
			per[e.InvolvedObject.Name] += max(e.Count, 1) + seriesCount(e)
		}
	}
	for i := range n {
		if name := fmt.Sprintf("k%03d", i); per[name] > 1 {
			t.Errorf("%s/%s: %d %s events, want at most 1", ns, name, per[name], reason)
		}
	}
}

func seriesCount(e corev1.Event) int32 {
	if e.Series == nil {
		return 0
	}
	return e.Series.Count - 1
}

// TestManagerPodDeletedMidBulk deletes the manager's pod when half of sixty keys have been
// asked for, so the rest arrive while it is replaced and the first half are being created: the
// replacement finishes the work, each key is created once and none is lost.
func TestManagerPodDeletedMidBulk(t *testing.T) {
	ns := namespace(t, "e2e-restart")
	const n = 60
	for i := range n {
		if i == n/2 {
			deleteManagerPods(t)
			var keys v1alpha1.CustomerMasterKeyList
			if err := c.List(t.Context(), &keys, client.InNamespace(ns)); err != nil {
				t.Fatal(err)
			}
			pending := n - len(keys.Items)
			for _, k := range keys.Items {
				if k.Status.Phase != v1alpha1.PhaseEnabled {
					pending++
				}
			}
			t.Logf("manager pod deleted with %d of %d keys not yet Enabled", pending, n)
		}
		k := key(ns, fmt.Sprintf("k%03d", i), testenv.Labels(map[string]string{"bulk": ns}))
		if err := c.Create(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]string{}
	for i := range n {
		name := fmt.Sprintf("k%03d", i)
		k := waitPhase(t, ns, name, v1alpha1.PhaseEnabled)
		if other, dup := ids[k.Status.KeyID]; dup {
			t.Errorf("%s and %s have the same key %s", name, other, k.Status.KeyID)
		}
		ids[k.Status.KeyID] = name
		// The KMS's side: the embedded KMS keeps one Secret per key, labeled with its owner.
		var secrets corev1.SecretList
		if err := c.List(t.Context(), &secrets, client.InNamespace(operatorNamespace),
			client.MatchingLabels{"kms.cmk.io/owner-uid": string(k.UID)}); err != nil {
			t.Fatal(err)
		}
		if len(secrets.Items) != 1 {
			t.Errorf("%s: the KMS holds %d keys for it, want 1", name, len(secrets.Items))
		}
	}
	eventsAtMostOnce(t, ns, v1alpha1.EventCreated, n)
}

func deleteManagerPods(t *testing.T) {
	t.Helper()
	var pods corev1.PodList
	if err := c.List(t.Context(), &pods, client.InNamespace(operatorNamespace), managerPods); err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if err := c.Delete(t.Context(), &pods.Items[i]); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLeaderFailover runs two replicas, starts a bulk deletion schedule and deletes the
// leader's pod: the other replica takes over, every key is scheduled once, and the time the
// keys went unattended is reported.
func TestLeaderFailover(t *testing.T) {
	scaleManager(t, 2)
	t.Cleanup(func() { scaleManager(t, 1) })
	ns := namespace(t, "e2e-failover")
	const n = 40
	createKeys(t, ns, n)
	leader := leaseHolder(t)
	if leader == "" {
		t.Fatal("no replica holds the lease")
	}

	kubectlCmk(t, "-n", ns, "schedule-deletion", "-l", "bulk="+ns)
	start := time.Now()
	if err := c.Delete(t.Context(), &corev1.Pod{ObjectMeta: objectMeta(operatorNamespace, leader)}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(wait); ; time.Sleep(100 * time.Millisecond) {
		if h := leaseHolder(t); h != "" && h != leader {
			t.Logf("failover: %s took over from %s %v after its pod was deleted", h, leader, time.Since(start).Round(10*time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no other replica took the lease")
		}
	}
	for i := range n {
		waitPhase(t, ns, fmt.Sprintf("k%03d", i), v1alpha1.PhasePendingDeletion)
	}
	t.Logf("all %d keys pending deletion %v after the leader's pod was deleted", n, time.Since(start).Round(10*time.Millisecond))
	eventsAtMostOnce(t, ns, v1alpha1.EventDeletionScheduled, n)
}
