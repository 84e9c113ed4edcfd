package controllers

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

const day = 24 * time.Hour

// TestNewWindowWhileStopped cancels a deletion and schedules it again with another
// pendingDays while the operator is down, so it sees both edits as one: the deletion is
// canceled and scheduled again with the new window, longer or shorter, never kept at the old
// date (docs/lifecycle.md, "Deletion dates").
func TestNewWindowWhileStopped(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("window"))
	h.waitPhase("window", v1alpha1.PhaseEnabled)
	h.patch("window", schedule)
	c := h.waitPhase("window", v1alpha1.PhasePendingDeletion)
	if c.Status.PendingDays != 7 {
		t.Errorf("status.pendingDays %d after scheduling with 7", c.Status.PendingDays)
	}
	// Events are sent on their own, after the status that follows them: a manager stopped at
	// once may never send its last one.
	scheduled := func(n int) {
		t.Helper()
		NewWithT(t).Eventually(func() int { return countOf(h.events("window"), v1alpha1.EventDeletionScheduled) }).
			WithTimeout(timeout).Should(Equal(n), "DeletionScheduled events: %v", h.events("window"))
	}
	scheduled(1)

	for i, days := range []int{30, 7} {
		h.stopManager()
		h.clock.Step(day)
		h.patch("window", cancel)
		h.patch("window", map[string]any{"deletionScheduled": true, "pendingDays": days})
		h.kms = h.newProvider(env.Client)
		h.start(managerOptions{})

		c = h.waitPhase("window", v1alpha1.PhasePendingDeletion)
		want := h.clock.Now().Add(time.Duration(days) * day)
		if c.Status.DeletionDate == nil || c.Status.DeletionDate.Sub(want).Abs() > time.Second || c.Status.PendingDays != int32(days) {
			t.Errorf("pendingDays %d: deletionDate %v with window %d, want %v", days, c.Status.DeletionDate, c.Status.PendingDays, want)
		}
		if k, err := h.kms.Observe(context.Background(), c.Status.KeyID); err != nil || !k.DeletionDate.Equal(c.Status.DeletionDate.Time) {
			t.Errorf("the KMS's date %v differs from status (%v)", k.DeletionDate, err)
		}
		scheduled(2 + i)
	}
	if n := countOf(h.events("window"), v1alpha1.EventDeletionScheduled); n != 3 {
		t.Errorf("%d DeletionScheduled events, want 3: %v", n, h.events("window"))
	}
}

// TestAdoptedDeletionKeepsDate adopts a key scheduled for deletion outside Kubernetes with
// the spec asking for the deletion too: its date stands, and the spec's window is recorded, so
// a later change of pendingDays schedules it again.
func TestAdoptedDeletionKeepsDate(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.allowAdoption()
	id := h.outsideKey("AES_256", "ENCRYPT_DECRYPT", "")
	if err := h.kms.ScheduleDeletion(context.Background(), id, 10); err != nil {
		t.Fatal(err)
	}
	outside, _ := h.kms.Observe(context.Background(), id)
	h.start(managerOptions{})
	h.create(h.cmk("adopted", adopting(id), func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Enabled, c.Spec.DeletionScheduled = false, true
	}))
	c := h.waitPhase("adopted", v1alpha1.PhasePendingDeletion)
	if c.Status.DeletionDate == nil || !c.Status.DeletionDate.Time.Equal(outside.DeletionDate) || c.Status.PendingDays != 7 {
		t.Errorf("adopted deletion: date %v (was %v), window %d", c.Status.DeletionDate, outside.DeletionDate, c.Status.PendingDays)
	}

	h.patch("adopted", cancel)
	h.patch("adopted", map[string]any{"deletionScheduled": true, "pendingDays": 60})
	c = h.eventually("adopted", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
		g.Expect(c.Status.PendingDays).To(Equal(int32(60)))
	})
	if want := h.clock.Now().Add(60 * day); c.Status.DeletionDate.Sub(want).Abs() > time.Second {
		t.Errorf("after pendingDays 60: date %v, want %v", c.Status.DeletionDate, want)
	}
	if h.kmsState(id) != kms.StatePendingDeletion {
		t.Errorf("key is %s", h.kmsState(id))
	}
}
