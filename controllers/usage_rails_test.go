package controllers

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// TestAdoptedKeyInUseHeld: a resource (Retain) whose key a PersistentVolume uses is deleted, and
// another one adopts the key by spec.keyID, asking it disabled, scheduled for deletion, or
// neither. The consumers are counted for the key found in that very reconcile, so the change is
// held (KeyInUse) and status.usage shows them at once.
func TestAdoptedKeyInUseHeld(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		mutate func(*v1alpha1.CustomerMasterKey)
	}{
		{"enabled", func(*v1alpha1.CustomerMasterKey) {}},
		{"disabled", func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled = false }},
		{"scheduled", func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled, c.Spec.DeletionScheduled = false, true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.start(managerOptions{})
			h.create(h.cmk("old"))
			id := h.waitPhase("old", v1alpha1.PhaseEnabled).Status.KeyID
			pv := encryptedVolume("pv-"+h.ns, id)
			createAll(t, pv)
			t.Cleanup(func() { deleteAll(t, pv) })
			h.usedBy("old", "PersistentVolume/-/pv-"+h.ns)
			h.delete("old")
			h.waitGone("old")

			h.create(h.cmk("new", adopting(id), tc.mutate))
			h.eventually("new", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
				g.Expect(c.Status.KeyID).To(Equal(id))
				g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
			})
			time.Sleep(2 * time.Second)
			c := h.get("new")
			if c.Status.Usage == nil || c.Status.Usage.Consumers != 1 {
				t.Errorf("2s after adopting a key a PV uses, status.usage is %+v: the admission policy and kubectl cmk see no consumer", c.Status.Usage)
			}
			if st := h.kmsState(id); st != kms.StateEnabled {
				t.Errorf("a key in use by a PV was made %s by the resource adopting it (status.usage %+v, Ready %+v)",
					st, c.Status.Usage, cond(c, v1alpha1.ConditionReady))
			}
		})
	}
}

// TestObserverDeclaresConsumers: B observes A's key in the same namespace, and a Deployment
// declares uses-key: B. The consumer protects the key under A too: A's disable is held.
func TestObserverDeclaresConsumers(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("a"))
	id := h.waitPhase("a", v1alpha1.PhaseEnabled).Status.KeyID
	h.create(h.cmk("b", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.ManagementPolicy, c.Spec.KeyID = v1alpha1.ManagementPolicyObserve, id
	}))
	app := declaring(h.ns, "api", "b")
	createAll(t, app)
	h.usedBy("b", "Deployment/"+h.ns+"/api")
	h.patch("a", map[string]any{"enabled": false})
	time.Sleep(2 * time.Second)
	if st := h.kmsState(id); st != kms.StateEnabled {
		t.Errorf("key %s, declared in use through its Observe resource b, was disabled through a: %s (a's usage %+v)",
			id, st, h.get("a").Status.Usage)
	}
}
