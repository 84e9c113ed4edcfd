package controllers

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/util/uuid"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// foreignKey makes a key as another cluster's operator would have: owner h.ns/name with a UID
// that no longer exists here, provenance naming another cluster.
func (h *harness) foreignKey(name, policy string) string {
	h.t.Helper()
	uid := string(uuid.NewUUID())
	k, err := h.kms.Create(context.Background(), kms.CreateRequest{Alias: "k8s/" + h.ns + "/" + name, KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: uid, Owner: kms.Owner{Namespace: h.ns, Name: name, UID: uid},
		Provenance: kms.Provenance{Cluster: string(uuid.NewUUID()), Install: "0123456789abcdef", DeletionPolicy: policy, PendingDays: 7}})
	if err != nil {
		h.t.Fatal(err)
	}
	return k.ID
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

// TestSweepKeepsKeyOfVanishedObserveResource: a key made under Manage with Delete, its resource
// switched to Observe and then gone without its finalizer: the switch itself recorded Retain
// (retainOwn), so the sweep keeps the key.
func TestSweepKeepsKeyOfVanishedObserveResource(t *testing.T) {
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
	h.stopManager()
	h.orphan("handed-over")
	res, err := h.sweeper(env.Client).sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st := h.kmsState(id); st != kms.StateEnabled {
		t.Errorf("an Observe resource vanished without its finalizer: the sweep (%+v) scheduled its key (%s, recorded %+v)", res, st, h.provenanceOf(id))
	}
}

// TestSweepSchedulesOrphanWhoseNameHasAnotherKey: an orphan recorded Delete whose namespace and
// name live again, with a key of their own (another spec.alias), is no key that resource will
// take back: the sweep schedules it.
func TestSweepSchedulesOrphanWhoseNameHasAnotherKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("orders", deletePolicy))
	old := h.waitPhase("orders", v1alpha1.PhaseEnabled).Status.KeyID
	h.stopManager()
	h.orphan("orders")
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
