package controllers

import (
	"context"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// allowAdoption labels the harness's namespace so its resources may adopt keys made outside
// the operator, as an administrator would.
func (h *harness) allowAdoption() {
	h.t.Helper()
	ns := &corev1.Namespace{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: h.ns}, ns); err != nil {
		h.t.Fatal(err)
	}
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels[AllowAdoptionLabel] = "true"
	if err := env.Client.Update(context.Background(), ns); err != nil {
		h.t.Fatal(err)
	}
}

// outsideKey makes a key in the KMS as the console would, with no resource behind it.
func (h *harness) outsideKey(spec, usage, description string) string {
	h.t.Helper()
	k, err := h.kms.Create(context.Background(), kms.CreateRequest{
		Alias: "console/" + h.ns + "/" + spec, Description: description, KeySpec: spec, KeyUsage: usage,
		Origin: kms.OriginKMS, Token: "console-" + h.ns + spec,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return k.ID
}

// unknownKeyID has the form of a key ID, and no KMS has it.
const unknownKeyID = "00000000-0000-4000-8000-00000000dead"

func adopting(id string) func(*v1alpha1.CustomerMasterKey) {
	return func(c *v1alpha1.CustomerMasterKey) { c.Spec.KeyID = id }
}

// TestAdoptKeyPendingDeletion adopts a key someone scheduled for deletion outside Kubernetes
// and cancels the deletion: it comes back Disabled, and no key is created.
func TestAdoptKeyPendingDeletion(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.allowAdoption()
	h.start(managerOptions{})
	id := h.outsideKey("AES_256", "ENCRYPT_DECRYPT", "made in the console")
	if err := h.kms.ScheduleDeletion(context.Background(), id, 7); err != nil {
		t.Fatal(err)
	}
	h.create(h.cmk("adopted", adopting(id), func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled = false }))
	c := h.waitPhase("adopted", v1alpha1.PhaseDisabled)
	if c.Status.KeyID != id || h.keySecrets() != 1 {
		t.Errorf("status.keyID %s (want %s), %d keys in the KMS (want 1)", c.Status.KeyID, id, h.keySecrets())
	}
	k, _ := h.kms.Observe(context.Background(), id)
	if k.Description != "made in the console" {
		t.Errorf("adoption changed the key's description to %q", k.Description)
	}
	NewWithT(t).Eventually(func() []string { return h.events("adopted") }).WithTimeout(timeout).Should(
		ContainElements(v1alpha1.EventAdopted, v1alpha1.EventDeletionCanceled))

	// Once adopted, spec.keyID is fixed.
	err := env.Client.Patch(context.Background(), c, rawMerge(t, map[string]any{"spec": map[string]any{"keyID": unknownKeyID}}))
	if err == nil || !strings.Contains(err.Error(), "spec.keyID must name the key this resource already manages") {
		t.Errorf("changing an adopted keyID: %v", err)
	}
	err = env.Client.Patch(context.Background(), c, rawMerge(t, map[string]any{"spec": map[string]any{"keyID": nil}}))
	if err == nil || !strings.Contains(err.Error(), "spec.keyID cannot be removed once the key is adopted") {
		t.Errorf("removing an adopted keyID: %v", err)
	}
}

// TestAdoptUnknownKey names a key the KMS does not have: a condition says so, nothing is
// created, and the ID can be corrected.
func TestAdoptUnknownKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.allowAdoption()
	h.start(managerOptions{})
	h.create(h.cmk("typo", adopting(unknownKeyID)))
	c := h.eventually("typo", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionReady).Reason).To(Equal(v1alpha1.ReasonKeyNotFound))
	})
	if msg := cond(c, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "The KMS has no key "+unknownKeyID+" to adopt") ||
		c.Status.KeyID != "" || c.Status.Phase != "" || h.keySecrets() != 0 {
		t.Errorf("unknown key: %q, status %+v, %d keys", msg, c.Status, h.keySecrets())
	}
	id := h.outsideKey("AES_256", "ENCRYPT_DECRYPT", "")
	h.patch("typo", map[string]any{"keyID": id})
	if c := h.waitPhase("typo", v1alpha1.PhaseEnabled); c.Status.KeyID != id {
		t.Errorf("corrected keyID: status.keyID %s, want %s", c.Status.KeyID, id)
	}
}

// TestAdoptMismatch adopts a key whose spec differs from the resource's: nothing is done to it.
func TestAdoptMismatch(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.allowAdoption()
	h.start(managerOptions{})
	id := h.outsideKey("RSA_2048", "SIGN_VERIFY", "")
	h.create(h.cmk("wrong", adopting(id), func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled = false }))
	c := h.eventually("wrong", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionReady).Reason).To(Equal(v1alpha1.ReasonSpecMismatch))
	})
	if msg := cond(c, v1alpha1.ConditionSynced).Message; !strings.Contains(msg, "keySpec is RSA_2048, not AES_256") ||
		cond(c, v1alpha1.ConditionSynced).Status != metav1.ConditionFalse {
		t.Errorf("mismatch message: %q", msg)
	}
	if got := h.kmsState(id); got != kms.StateEnabled {
		t.Errorf("a mismatched key was changed to %s", got)
	}
}
