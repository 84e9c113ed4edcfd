package controllers

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// TestSweepKeepsProtectedKey: a protected resource with deletionPolicy Delete, deleted on a
// cluster without the admission policy, stays Terminating with DeletionProtected; an operator
// who strips its finalizer to unstick it does not get the key deleted by the sweep: a
// protected key is recorded as retained.
func TestSweepKeepsProtectedKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("vault", protectedDelete))
	id := h.waitPhase("vault", v1alpha1.PhaseEnabled).Status.KeyID
	h.delete("vault")
	h.eventually("vault", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionReady).Reason).To(Equal(v1alpha1.ReasonDeletionProtected))
	})
	h.stripFinalizers("vault")
	h.waitGone("vault")
	h.stopManager()
	h.sweepKeeps(id, "a deletionProtection: true key")
}

// sweepKeeps runs a sweep and checks it left the key as it was.
func (h *harness) sweepKeeps(id, what string) {
	h.t.Helper()
	res, err := h.sweeper(env.Client).sweep(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	if st := h.kmsState(id); st != kms.StateEnabled {
		h.t.Errorf("the sweep (%+v) scheduled the deletion of %s: it is %s (recorded %+v), want Enabled", res, what, st, h.provenanceOf(id))
	}
}

// TestSweepKeepsKeyOfObservedResource: a key made under Manage with deletionPolicy Delete, its
// resource switched to Observe, stays when the resource goes, deleted as usual or stripped of its
// finalizer: deleting an Observe resource never touches the key, and the switch recorded Retain
// (retainOwn; the finalizer too, retainObserved), so no sweep does either.
func TestSweepKeepsKeyOfObservedResource(t *testing.T) {
	t.Parallel()
	for name, gone := range map[string]func(h *harness, name string){
		"Deleted":  func(h *harness, name string) { h.delete(name); h.waitGone(name); h.stopManager() },
		"Stripped": func(h *harness, name string) { h.stopManager(); h.orphan(name) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.start(managerOptions{})
			h.create(h.cmk("handed-over", deletePolicy))
			id := h.waitPhase("handed-over", v1alpha1.PhaseEnabled).Status.KeyID
			h.patch("handed-over", map[string]any{"managementPolicy": "Observe", "keyID": id})
			h.eventually("handed-over", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
				g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
				g.Expect(cond(c, v1alpha1.ConditionReady).Reason).To(Equal(v1alpha1.ReasonObserved))
			})
			gone(h, "handed-over")
			h.sweepKeeps(id, "the key of a resource gone under Observe")
		})
	}
}

// TestSweepLeavesKeyToRecreatedResource: a resource with deletionPolicy Delete vanished without
// its finalizer, and GitOps or a restore creates it again (same namespace and name, new UID, no
// status). Whether the reconciler or the sweep (which runs at the manager's start, beside the
// reconcilers) comes first, the outcome is the same: the new resource takes the key back.
func TestSweepLeavesKeyToRecreatedResource(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	ids := h.orphaned("control", "orders")
	control, orders := ids[0], ids[1]

	// Control: re-created, the reconciler first: the key is taken back.
	h.create(h.cmk("control", deletePolicy))
	h.start(managerOptions{})
	h.eventually("control", func(g Gomega, c *v1alpha1.CustomerMasterKey) { g.Expect(c.Status.KeyID).To(Equal(control)) })
	h.stopManager()

	// Same, but the sweep comes first.
	h.create(h.cmk("orders", deletePolicy))
	res, err := h.sweeper(env.Client).sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h.start(managerOptions{})
	time.Sleep(3 * time.Second)
	c := h.get("orders")
	if c.Status.KeyID != orders || h.kmsState(orders) != kms.StateEnabled {
		t.Errorf("the sweep (%+v) ran before the reclaim: key %s is %s, the re-created resource has keyID %q, Ready %s: %s",
			res, orders, h.kmsState(orders), c.Status.KeyID, cond(c, v1alpha1.ConditionReady).Reason, cond(c, v1alpha1.ConditionReady).Message)
	}
}

// TestKeyOfAnotherClusterIsNotTaken: two clusters share a KMS account, and the same manifests
// give their resources the same namespaces and names, so the same aliases. A resource here
// neither takes back the other cluster's key of its name (by alias), nor adopts one of the
// other cluster's keys by spec.keyID without the administrator's adoption label; deleting both
// with deletionPolicy Delete leaves the other cluster's keys as they were.
func TestKeyOfAnotherClusterIsNotTaken(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	db, other := h.foreignKey("db", kms.PolicyRetain), h.foreignKey("other", kms.PolicyRetain)
	h.start(managerOptions{})

	h.create(h.cmk("db", deletePolicy))                  // same manifest as in cluster B
	h.create(h.cmk("thief", keyID(other), deletePolicy)) // a key ID of cluster B's, same namespace name
	time.Sleep(3 * time.Second)
	if c := h.get("db"); c.Status.KeyID == db {
		o, _ := h.kms.Owner(context.Background(), db)
		t.Errorf("db took back the other cluster's key %s (owner now %+v, events %v)", db, o, h.events("db"))
	}
	if c := h.get("thief"); c.Status.KeyID == other {
		t.Errorf("thief adopted the other cluster's key %s by spec.keyID", other)
	}
	h.delete("db")
	h.delete("thief")
	h.waitGone("db")
	h.waitGone("thief")
	for id, what := range map[string]string{db: "reclaimed", other: "adopted"} {
		if st := h.kmsState(id); st != kms.StateEnabled {
			t.Errorf("the other cluster's %s key %s is %s after this cluster deleted its resource", what, id, st)
		}
	}
}

// TestRestoreIntoNewClusterByName: a GitOps restore (no status) into a new cluster whose
// namespace an administrator labeled for adoption takes back, by name, the key the old cluster
// made (KeyReclaimed), as docs/lifecycle.md says.
func TestRestoreIntoNewClusterByName(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.allowAdoption()
	old := h.foreignKey("db", kms.PolicyRetain)
	h.start(managerOptions{})
	h.create(h.cmk("db"))
	time.Sleep(4 * time.Second)
	c := h.get("db")
	if c.Status.KeyID != old {
		r := cond(c, v1alpha1.ConditionReady)
		t.Errorf("restored into a new cluster with the adoption label, db did not take back its key %s: keyID %q, Ready %s: %s",
			old, c.Status.KeyID, r.Reason, r.Message)
	}
}

// TestSweepSchedulesOrphanWhoseNameHasAnotherKey: an orphan recorded Delete whose namespace and
// name live again, with a key of their own (another spec.alias), is no key that resource will
// take back: the sweep schedules it.
func TestSweepSchedulesOrphanWhoseNameHasAnotherKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	old := h.orphaned("orders")[0]
	h.create(h.cmk("orders", deletePolicy, func(c *v1alpha1.CustomerMasterKey) { c.Spec.Alias = "orders-v2-" + h.ns }))
	h.start(managerOptions{})
	if c := h.waitPhase("orders", v1alpha1.PhaseEnabled); c.Status.KeyID == old {
		t.Fatal("took the old key back")
	}
	res, err := h.sweeper(env.Client).sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st := h.kmsState(old); st != kms.StatePendingDeletion || res.scheduled != 1 {
		t.Errorf("an orphan recorded Delete, whose name lives again with another key, is not scheduled (%+v): %s", res, st)
	}
}
