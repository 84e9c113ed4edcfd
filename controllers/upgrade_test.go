package controllers

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
)

// The tests here are the previous version's leftovers and unlucky moments around taking keys:
// a key adopted or retained before owners were recorded, a status write lost right after a
// claim, a key deleted on purpose and a resource created again.

// oldVersionKey makes a key as the previous operator version left it: made for resource
// ns/name with UID uid, the owner kept in the record's tags, and no alias reservation.
func (h *harness) oldVersionKey(alias, name, uid string) string {
	h.t.Helper()
	ctx := context.Background()
	k, err := h.kms.Create(ctx, kms.CreateRequest{Alias: alias, KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT",
		Origin: kms.OriginKMS, Token: uid, Owner: kms.Owner{Namespace: h.ns, Name: name, UID: uid}})
	if err != nil {
		h.t.Fatal(err)
	}
	s := &corev1.Secret{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: h.kmsNS, Name: "cmk-" + k.ID}, s); err != nil {
		h.t.Fatal(err)
	}
	rec := map[string]any{}
	if err := json.Unmarshal(s.Data["key.json"], &rec); err != nil {
		h.t.Fatal(err)
	}
	delete(rec, "owner")
	delete(rec, "madeForOwner")
	rec["tags"] = map[string]string{"kms.cmk.io/namespace": h.ns, "kms.cmk.io/name": name, "kms.cmk.io/uid": uid}
	s.Data["key.json"] = mustJSON(h.t, rec)
	if err := env.Client.Update(ctx, s); err != nil {
		h.t.Fatal(err)
	}
	if err := env.Client.DeleteAllOf(ctx, &corev1.Secret{}, client.InNamespace(h.kmsNS),
		client.MatchingLabels{"kms.cmk.io/embedded-alias": "true"}); err != nil {
		h.t.Fatal(err)
	}
	return k.ID
}

// A status write lost right after a key was taken back: the next reconcile finds the alias
// held by a key this very resource owns (its creation token does not find it), and records it.
func TestReclaimSurvivesLostStatusWrite(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var armed atomic.Bool
	h.start(managerOptions{wrap: losingStatusWrites(func(c *v1alpha1.CustomerMasterKey) bool {
		return c.Status.KeyID != "" && armed.CompareAndSwap(true, false)
	})})
	h.create(h.cmk("orders"))
	x := h.waitPhase("orders", v1alpha1.PhaseEnabled).Status.KeyID
	h.delete("orders")
	h.waitGone("orders")

	armed.Store(true)
	h.create(h.cmk("orders"))
	h.eventually("orders", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(armed.Load()).To(BeFalse(), "the status write never failed")
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
		g.Expect(cond(c, v1alpha1.ConditionReady).Reason).NotTo(BeEmpty())
	})
	time.Sleep(2 * time.Second)
	c := h.get("orders")
	if c.Status.KeyID != x {
		t.Errorf("re-created orders after one lost status write: keyID %q (want %s), Ready %s: %s",
			c.Status.KeyID, x, cond(c, v1alpha1.ConditionReady).Reason, cond(c, v1alpha1.ConditionReady).Message)
	}
}

// A key adopted under the previous version (spec.keyID and status.keyID name it, and the KMS
// still names its creator, a resource of the same namespace deleted with Retain; or a status
// restored onto a new UID) stays managed: the adoption rules allow it, so it is claimed, and
// deletionPolicy Delete applies to it.
func TestUpgradeAdoptedKeyStaysManaged(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	x := h.oldVersionKey("k8s/"+h.ns+"/orders", "orders", "11111111-old-uid")
	h.create(h.cmk("restored", keyID(x), deletePolicy))
	c := h.get("restored")
	c.Status.KeyID, c.Status.Phase = x, v1alpha1.PhaseEnabled
	if err := env.Client.Status().Update(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	h.start(managerOptions{})
	c = h.eventually("restored", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
	})
	if r := cond(c, v1alpha1.ConditionReady); r.Reason != v1alpha1.ReasonAvailable {
		t.Errorf("a key adopted before the upgrade: Ready %s: %s", r.Reason, r.Message)
	}
	h.delete("restored")
	h.waitGone("restored")
	if st := h.kmsState(x); st != kms.StatePendingDeletion {
		t.Errorf("deleting the adopter with deletionPolicy Delete left its key %s", st)
	}
}

// A key deleted with deletionPolicy Delete is not revived by applying the same manifest
// again: the alias conflict says how to take it back on purpose, and spec.keyID does.
func TestRecreateDoesNotReviveDeletedKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("orders", deletePolicy))
	x := h.waitPhase("orders", v1alpha1.PhaseEnabled).Status.KeyID
	h.delete("orders")
	h.waitGone("orders")
	if st := h.kmsState(x); st != kms.StatePendingDeletion {
		t.Fatalf("deleted with Delete, key is %s", st)
	}
	h.create(h.cmk("orders", deletePolicy))
	NewWithT(t).Consistently(func() kms.State { return h.kmsState(x) }).WithTimeout(3*time.Second).
		Should(Equal(kms.StatePendingDeletion), "events %v", h.events("orders"))
	c := h.eventually("orders", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionReady).Reason).To(Equal(v1alpha1.ReasonAliasInUse))
	})
	if msg := cond(c, v1alpha1.ConditionReady).Message; c.Status.KeyID != "" || !strings.Contains(msg, "set spec.keyID: "+x) {
		t.Errorf("the key whose deletion the user asked for: keyID %q, %q", c.Status.KeyID, msg)
	}
	h.patch("orders", map[string]any{"keyID": x})
	if c := h.waitPhase("orders", v1alpha1.PhaseEnabled); c.Status.KeyID != x {
		t.Errorf("taken back by spec.keyID: keyID %q", c.Status.KeyID)
	}
}

// status.keyID is not a way around the adoption rules: whoever can write status (a tenant
// granted customermasterkeys/status, a restore tool) cannot make an unlabeled namespace keep a
// key made in the console, which spec.keyID is refused there.
func TestStatusKeyIDFollowsAdoptionRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t) // h.ns is not labeled kms.cmk.io/allow-key-adoption
	console := h.outsideKey("AES_256", "ENCRYPT_DECRYPT", "made in the console")
	h.create(h.cmk("grab", deletePolicy))
	c := h.get("grab")
	c.Status.KeyID = console
	if err := env.Client.Status().Update(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	h.start(managerOptions{})
	c = h.eventually("grab", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
	})
	if r := cond(c, v1alpha1.ConditionReady); r.Reason != v1alpha1.ReasonKeyOwnedElsewhere || !strings.Contains(r.Message, AllowAdoptionLabel) {
		own, _ := h.kms.Owner(context.Background(), console)
		t.Errorf("an unlabeled namespace kept a console key through status.keyID: Ready %s %q, KMS owner now %+v", r.Reason, r.Message, own)
	}
	h.delete("grab")
	h.waitGone("grab")
	if st := h.kmsState(console); st != kms.StateEnabled {
		t.Errorf("deleting grab with deletionPolicy Delete left the console key %s", st)
	}
}

// claimLoses is a KMS where every claim loses, as when another resource always claims first,
// or the KMS's tags do not keep a claim.
type claimLoses struct{ *embedded.Provider }

func (c claimLoses) Claim(_ context.Context, keyID string, _, _ kms.Owner) error {
	return &kms.ClaimError{KeyID: keyID}
}

// TestLostClaimIsShown checks a claim that keeps losing adopts nothing, does nothing to the
// key, and is shown in Synced while it is retried with backoff, not hidden in requeues.
func TestLostClaimIsShown(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.allowAdoption()
	h.start(managerOptions{provider: func(p *embedded.Provider) kms.Provider { return claimLoses{p} }})
	id := h.outsideKey("AES_256", "ENCRYPT_DECRYPT", "")
	h.create(h.cmk("contested", keyID(id), func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled = false }))
	c := h.eventually("contested", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionSynced).Reason).To(Equal(v1alpha1.ReasonReconcileError))
	})
	if msg := cond(c, v1alpha1.ConditionSynced).Message; !strings.Contains(msg, "changed while it was being claimed") || c.Status.KeyID != "" {
		t.Errorf("a lost claim: keyID %q, Synced %q", c.Status.KeyID, msg)
	}
	if st := h.kmsState(id); st != kms.StateEnabled {
		t.Errorf("the contested key is %s", st)
	}
}

// A key taken back whose status writes are all lost (the apiserver, or the manager, failing
// at that moment) is still found when the resource is deleted: Lookup finds a key by its
// claimant's UID, so deletionPolicy Delete applies to it.
func TestReclaimedKeyFoundByFinalizerAfterLostStatus(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var failStatus atomic.Bool
	h.start(managerOptions{wrap: losingStatusWrites(func(c *v1alpha1.CustomerMasterKey) bool {
		return c.Status.KeyID != "" && failStatus.Load()
	})})
	h.create(h.cmk("orders"))
	x := h.waitPhase("orders", v1alpha1.PhaseEnabled).Status.KeyID
	h.delete("orders")
	h.waitGone("orders")
	failStatus.Store(true)
	h.create(h.cmk("orders", deletePolicy))
	uid := string(h.get("orders").UID)
	NewWithT(t).Eventually(func() string {
		o, _ := h.kms.Owner(context.Background(), x)
		return o.UID
	}).WithTimeout(timeout).Should(Equal(uid), "the key was never taken back")
	h.delete("orders")
	h.waitGone("orders")
	if st := h.kmsState(x); st != kms.StatePendingDeletion {
		o, _ := h.kms.Owner(context.Background(), x)
		t.Errorf("orders (deletionPolicy Delete) took key %s back and was deleted: key left %s, owner %+v", x, st, o)
	}
}
