package controllers

import (
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// TestGuardRailRules sends the guard rails' bad input, and the input a hostile or careless
// user tried, to the apiserver: each is refused with a message that says what to do, in one
// line however long the input.
func TestGuardRailRules(t *testing.T) {
	h := newHarness(t)
	const keyID = "0d0466b0-e727-4d9c-b35d-f84bb474a37f"
	cases := map[string]struct {
		spec map[string]any
		want string // a fragment of the refusal; "" means accepted
	}{
		"Protected":           {map[string]any{"deletionProtection": true}, ""},
		"ProtectedScheduled":  {map[string]any{"deletionProtection": true, "enabled": false, "deletionScheduled": true}, "deletionScheduled: true is refused while deletionProtection is true: clear the protection first"},
		"Observe":             {map[string]any{"managementPolicy": "Observe", "keyID": keyID}, ""},
		"ObserveWithoutKeyID": {map[string]any{"managementPolicy": "Observe"}, "managementPolicy: Observe needs spec.keyID"},
		"UnknownPolicy":       {map[string]any{"managementPolicy": "ObserveOnly", "keyID": keyID}, `Unsupported value: "ObserveOnly"`},
		"KeyIDOfLetters":      {map[string]any{"keyID": "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"}, "keyID must be a KMS key ID"},
		"KeyIDUpperCase":      {map[string]any{"keyID": strings.ToUpper(keyID)}, "keyID must be a KMS key ID"},
		"DescriptionNUL":      {map[string]any{"description": "a\x00b"}, "description cannot hold control characters"},
		"DescriptionEscape":   {map[string]any{"description": "\x1b[31mred"}, "description cannot hold control characters"},
		"DescriptionDEL":      {map[string]any{"description": "a\x7fb"}, "description cannot hold control characters"},
		"DescriptionBidi":     {map[string]any{"description": "safe \u202eyek"}, "bidirectional overrides"},
		"DescriptionIsolate":  {map[string]any{"description": "\u2066x\u2069"}, "bidirectional overrides"},
		"DescriptionUnicode":  {map[string]any{"description": "Schlüssel für Zahlungen, 支付密钥"}, ""},
		"ReservedTagCase":     {map[string]any{"tags": map[string]any{"KMS.CMK.IO/namespace": "x"}}, "are reserved for the operator's own tags"},
		"ReservedOwnerCase":   {map[string]any{"tags": map[string]any{"CMK-Operator-owner-uid": "x"}}, "are reserved for the operator's own tags"},
		"TagKeyBidi":          {map[string]any{"tags": map[string]any{"team\u202e": "x"}}, "tag keys cannot hold control characters or any of * < > = \\ (the KMS refuses them), nor bidirectional overrides"},
		"TagValueDEL":         {map[string]any{"tags": map[string]any{"team": "a\x7f"}}, "tag values cannot hold control characters or any of * < > = \\ (the KMS refuses them), nor bidirectional overrides"},
		"DescriptionC1CSI":    {map[string]any{"description": "ok \u009b31mALERT"}, "description cannot hold control characters"},
		"DescriptionNEL":      {map[string]any{"description": "line one\u0085line two"}, "description cannot hold control characters"},
		"DescriptionLS":       {map[string]any{"description": "line one\u2028line two"}, "description cannot hold control characters"},
		"TagValueNEL":         {map[string]any{"tags": map[string]any{"team": "a\u0085b"}}, "tag values cannot hold control characters"},
		"TagKeyCSI":           {map[string]any{"tags": map[string]any{"team\u009b": "a"}}, "tag keys cannot hold control characters"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := env.Client.Create(context.Background(), unstructuredCMK(h.ns, strings.ToLower(name), tc.spec))
			checkRefusal(t, err, tc.want)
		})
	}

	// A description of 1.5 MB is refused by its length, in a message that does not echo it.
	huge := strings.Repeat("d", 1536*1024)
	err := env.Client.Create(context.Background(), unstructuredCMK(h.ns, "huge", map[string]any{"description": huge}))
	checkRefusal(t, err, "spec.description: Too long")
	if err != nil && len(err.Error()) > 1024 {
		t.Errorf("the refusal of a 1.5 MB description is %d bytes long; want one line", len(err.Error()))
	}

	// A stray bulk patch cannot schedule a protected key's deletion; clearing the protection
	// in the same patch says so explicitly, and is taken.
	protected := unstructuredCMK(h.ns, "protected-later", map[string]any{"deletionProtection": true})
	if err := env.Client.Create(context.Background(), protected); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		patch map[string]any
		want  string
	}{
		{map[string]any{"enabled": false, "deletionScheduled": true}, "deletionScheduled: true is refused while deletionProtection is true"},
		{map[string]any{"enabled": false}, ""},
		{map[string]any{"deletionProtection": false, "deletionScheduled": true}, ""},
		{map[string]any{"deletionProtection": true}, "deletionScheduled: true is refused while deletionProtection is true"},
	} {
		raw := mustJSON(t, map[string]any{"spec": tc.patch})
		err := env.Client.Patch(context.Background(), protected, client.RawPatch("application/merge-patch+json", raw))
		checkRefusal(t, err, tc.want)
	}
}

// kmsWrites counts every call that would change something in the KMS, so a test can say the
// KMS saw no write.
type kmsWrites struct {
	*embedded.Provider
	n atomic.Int64
}

func (w *kmsWrites) Create(ctx context.Context, req kms.CreateRequest) (kms.Key, error) {
	w.n.Add(1)
	return w.Provider.Create(ctx, req)
}
func (w *kmsWrites) Enable(ctx context.Context, id string) error {
	w.n.Add(1)
	return w.Provider.Enable(ctx, id)
}
func (w *kmsWrites) Disable(ctx context.Context, id string) error {
	w.n.Add(1)
	return w.Provider.Disable(ctx, id)
}
func (w *kmsWrites) ScheduleDeletion(ctx context.Context, id string, days int) error {
	w.n.Add(1)
	return w.Provider.ScheduleDeletion(ctx, id, days)
}
func (w *kmsWrites) CancelDeletion(ctx context.Context, id string) error {
	w.n.Add(1)
	return w.Provider.CancelDeletion(ctx, id)
}
func (w *kmsWrites) SetDescription(ctx context.Context, id, d string) error {
	w.n.Add(1)
	return w.Provider.SetDescription(ctx, id, d)
}
func (w *kmsWrites) Claim(ctx context.Context, id string, owner, previous kms.Owner) error {
	w.n.Add(1)
	return w.Provider.Claim(ctx, id, owner, previous)
}
func (w *kmsWrites) SetRotation(ctx context.Context, id string, on bool, days int) error {
	w.n.Add(1)
	return w.Provider.SetRotation(ctx, id, on, days)
}
func (w *kmsWrites) SetTags(ctx context.Context, id string, tags map[string]string) error {
	w.n.Add(1)
	return w.Provider.SetTags(ctx, id, tags)
}
func (w *kmsWrites) SetPolicy(ctx context.Context, id string, prov kms.Provenance) error {
	w.n.Add(1)
	return w.Provider.SetPolicy(ctx, id, prov)
}
func (w *kmsWrites) ImportParameters(ctx context.Context, id string) (kms.ImportParameters, error) {
	w.n.Add(1)
	return w.Provider.ImportParameters(ctx, id)
}
func (w *kmsWrites) ImportMaterial(ctx context.Context, id, token string, wrapped []byte, expiresAt time.Time) error {
	w.n.Add(1)
	return w.Provider.ImportMaterial(ctx, id, token, wrapped, expiresAt)
}

// startCounting runs the harness's manager with its KMS writes counted.
func (h *harness) startCounting(opts managerOptions) *kmsWrites {
	w := &kmsWrites{Provider: h.kms}
	opts.provider = func(*embedded.Provider) kms.Provider { return w }
	h.start(opts)
	return w
}

// noWritesFor checks that the KMS sees no write for a while.
func noWritesFor(t *testing.T, w *kmsWrites, d time.Duration) {
	t.Helper()
	before := w.n.Load()
	time.Sleep(d)
	if n := w.n.Load() - before; n != 0 {
		t.Errorf("the KMS saw %d writes, want none", n)
	}
}

func protectedDelete(c *v1alpha1.CustomerMasterKey) {
	c.Spec.DeletionProtection, c.Spec.DeletionPolicy = true, v1alpha1.DeletionPolicyDelete
}

// TestDeletionProtectionHoldsTheFinalizer deletes a protected resource whose deletionPolicy is
// Delete on a cluster without the admission policy: the finalizer schedules nothing, the
// resource stays Terminating with DeletionProtected, and clearing the protection lets it go,
// its key scheduled for deletion as the policy asks.
func TestDeletionProtectionHoldsTheFinalizer(t *testing.T) {
	h := newHarness(t)
	w := h.startCounting(managerOptions{})
	h.create(h.cmk("vault", protectedDelete))
	id := h.waitPhase("vault", v1alpha1.PhaseEnabled).Status.KeyID

	h.delete("vault")
	c := h.eventually("vault", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.DeletionTimestamp).NotTo(BeNil())
		g.Expect(cond(c, v1alpha1.ConditionReady).Reason).To(Equal(v1alpha1.ReasonDeletionProtected))
		g.Expect(cond(c, v1alpha1.ConditionStalled).Reason).To(Equal(v1alpha1.ReasonDeletionProtected))
	})
	if msg := cond(c, v1alpha1.ConditionReady).Message; !strings.Contains(msg, `kubectl patch cmk vault -n `+h.ns+` --type merge -p '{"spec":{"deletionProtection":false}}'`) {
		t.Errorf("the message does not say how to clear the protection: %q", msg)
	}
	NewWithT(t).Eventually(func() []string { return h.events("vault") }).WithTimeout(timeout).Should(ContainElement(v1alpha1.ReasonDeletionProtected))
	noWritesFor(t, w, time.Second)
	if st := h.kmsState(id); st != kms.StateEnabled {
		t.Errorf("the protected key is %s, want Enabled", st)
	}

	h.patch("vault", map[string]any{"deletionProtection": false})
	h.waitGone("vault")
	if st := h.kmsState(id); st != kms.StatePendingDeletion {
		t.Errorf("after the protection was cleared the key is %s, want PendingDeletion as deletionPolicy Delete asks", st)
	}
}

// TestDeletionProtectionAtAdmission: with config/admission's policy, deleting a protected
// resource whose deletionPolicy is Delete is refused, with what to do; one with Retain, or
// not protected, is deleted as usual.
func TestDeletionProtectionAtAdmission(t *testing.T) {
	h := newHarness(t)
	w := h.startCounting(managerOptions{})
	installManifests(t, filepath.Join("..", "config", "admission", "deletion_protection_policy.yaml"))
	h.create(h.cmk("vault", protectedDelete), h.cmk("kept", func(c *v1alpha1.CustomerMasterKey) { c.Spec.DeletionProtection = true }))
	id := h.waitPhase("vault", v1alpha1.PhaseEnabled).Status.KeyID
	h.waitPhase("kept", v1alpha1.PhaseEnabled)

	// The apiserver takes a new policy in after a moment: dry runs ask until it has.
	vault := h.cmk("vault")
	NewWithT(t).Eventually(func() error { return env.Client.Delete(context.Background(), vault, client.DryRunAll) }).
		WithTimeout(timeout).Should(HaveOccurred())
	err := env.Client.Delete(context.Background(), vault)
	if err == nil || !strings.Contains(err.Error(), "has deletionProtection: true and deletionPolicy: Delete") ||
		!strings.Contains(err.Error(), "kubectl patch cmk vault -n "+h.ns) {
		t.Errorf("deleting a protected resource with deletionPolicy Delete: %v; want a refusal saying what to do", err)
	}
	noWritesFor(t, w, time.Second)
	if c := h.get("vault"); c.DeletionTimestamp != nil || h.kmsState(id) != kms.StateEnabled {
		t.Errorf("a refused delete left the resource deleting (%v) or the key %s", c.DeletionTimestamp, h.kmsState(id))
	}
	h.delete("kept") // Retain: deleting it deletes no key, so protection does not stand in the way
	h.waitGone("kept")
	removeManifests(t, filepath.Join("..", "config", "admission", "deletion_protection_policy.yaml"), func() error {
		return env.Client.Delete(context.Background(), vault, client.DryRunAll)
	})
}

// removeManifests deletes the policies of path before the tests that run after this one, which
// expect none. The apiserver lets go of a deleted policy after a moment: refused, which the
// policy refuses, is asked until it passes.
func removeManifests(t *testing.T, path string, refused func() error) {
	t.Helper()
	for _, obj := range readManifests(t, path) {
		if err := env.Client.Delete(context.Background(), obj); client.IgnoreNotFound(err) != nil {
			t.Fatal(err)
		}
	}
	NewWithT(t).Eventually(refused).WithTimeout(timeout).Should(Succeed(), "the policies of %s still hold", path)
}

// TestObserveOnly observes a key made outside the operator: status follows the KMS (state,
// deletion date, tags) at the sync period, spec changes are ignored, the KMS sees no write,
// and deleting the resource leaves the key. Switching to Manage then adopts it.
func TestObserveOnly(t *testing.T) {
	h := newHarness(t)
	h.allowAdoption()
	id := h.outsideKey("AES_256", "ENCRYPT_DECRYPT", "made in the console")
	w := h.startCounting(managerOptions{syncPeriod: time.Second})
	observe := func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.ManagementPolicy, c.Spec.KeyID = v1alpha1.ManagementPolicyObserve, id
		c.Spec.DeletionPolicy = v1alpha1.DeletionPolicyDelete
	}
	h.create(h.cmk("watched", observe))
	c := h.waitPhase("watched", v1alpha1.PhaseEnabled)
	if c.Status.KeyID != id || cond(c, v1alpha1.ConditionReady).Reason != v1alpha1.ReasonObserved {
		t.Errorf("observed: keyID %q, Ready %+v", c.Status.KeyID, cond(c, v1alpha1.ConditionReady))
	}

	h.patch("watched", map[string]any{"enabled": false, "description": "ignored", "tags": map[string]any{"team": "x"}})
	h.waitPhase("watched", v1alpha1.PhaseEnabled)
	noWritesFor(t, w, 2*time.Second)

	// Changes made in the console show in status.
	if err := h.kms.SetTags(context.Background(), id, map[string]string{"owner": "console"}); err != nil {
		t.Fatal(err)
	}
	if err := h.kms.Disable(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if err := h.kms.ScheduleDeletion(context.Background(), id, 30); err != nil {
		t.Fatal(err)
	}
	h.eventually("watched", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Phase).To(Equal(v1alpha1.PhasePendingDeletion))
		g.Expect(c.Status.DeletionDate).NotTo(BeNil())
		g.Expect(c.Status.Tags).To(Equal(map[string]string{"owner": "console"}))
	})
	if o, _ := h.kms.Owner(context.Background(), id); !o.IsZero() {
		t.Errorf("observing recorded an owner on the key: %+v", o)
	}

	writes := w.n.Load()
	h.delete("watched")
	h.waitGone("watched")
	if n := w.n.Load() - writes; n != 0 || h.kmsState(id) != kms.StatePendingDeletion {
		t.Errorf("deleting the observed resource: %d KMS writes, key %s; want none, and the key as it was", n, h.kmsState(id))
	}
	if err := h.kms.CancelDeletion(context.Background(), id); err != nil {
		t.Fatal(err)
	}

	// Observed first, then managed: adopted under the ownership rules, and the spec applied.
	h.create(h.cmk("adopted", observe))
	h.waitPhase("adopted", v1alpha1.PhaseDisabled)
	h.patch("adopted", map[string]any{"managementPolicy": "Manage", "enabled": true})
	h.waitPhase("adopted", v1alpha1.PhaseEnabled)
	if o, _ := h.kms.Owner(context.Background(), id); !o.Is(h.ns, "adopted") {
		t.Errorf("switched to Manage, the key's owner is %+v, want %s/adopted", o, h.ns)
	}
}

// TestObserveRefusedAcrossNamespaces: a tenant cannot read another namespace's key by
// observing it.
func TestObserveRefusedAcrossNamespaces(t *testing.T) {
	w := newWorld(t, managerOptions{})
	w.a.create("orders")
	id := w.a.waitPhase("orders", v1alpha1.PhaseEnabled).Status.KeyID
	w.b.create("peek", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.ManagementPolicy, c.Spec.KeyID = v1alpha1.ManagementPolicyObserve, id
	})
	c := w.b.waitReason("peek", v1alpha1.ReasonAdoptionRefused)
	if c.Status.KeyID != "" || c.Status.Phase != "" {
		t.Errorf("the refused observer learned the key: %+v", c.Status)
	}
}

// TestPause: a paused resource is not touched, its deletion included; removing the
// annotation applies the pending spec.
func TestPause(t *testing.T) {
	h := newHarness(t)
	w := h.startCounting(managerOptions{})
	h.create(h.cmk("frozen", func(c *v1alpha1.CustomerMasterKey) { c.Spec.DeletionPolicy = v1alpha1.DeletionPolicyDelete }))
	id := h.waitPhase("frozen", v1alpha1.PhaseEnabled).Status.KeyID

	annotate := func(v any) {
		t.Helper()
		c := h.cmk("frozen")
		if err := env.Client.Patch(context.Background(), c, rawMerge(t, map[string]any{"metadata": map[string]any{
			"annotations": map[string]any{v1alpha1.PausedAnnotation: v}}})); err != nil {
			t.Fatal(err)
		}
	}
	annotate("true")
	h.eventually("frozen", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionSynced).Reason).To(Equal(v1alpha1.ReasonReconcilePaused))
	})
	h.patch("frozen", map[string]any{"enabled": false})
	h.delete("frozen")
	noWritesFor(t, w, 2*time.Second)
	if c := h.get("frozen"); c.Status.Phase != v1alpha1.PhaseEnabled || h.kmsState(id) != kms.StateEnabled {
		t.Errorf("paused: phase %s, key %s; want both Enabled, untouched", c.Status.Phase, h.kmsState(id))
	}

	annotate(nil)
	h.waitGone("frozen")
	if st := h.kmsState(id); st != kms.StatePendingDeletion {
		t.Errorf("unpaused, the deleted resource's key is %s, want PendingDeletion (deletionPolicy Delete)", st)
	}
}

// TestEditedStatusIsPutRight: someone with rights on the status subresource writes a status
// the KMS contradicts (Enabled on a key waiting for material, its import parameters gone); the
// operator puts it right at once, not at the next resync.
func TestEditedStatusIsPutRight(t *testing.T) {
	h := newHarness(t)
	h.start(managerOptions{syncPeriod: time.Hour})
	h.create(h.cmk("byok", testenv.External))
	c := h.waitImportParameters("byok", "")
	id := c.Status.KeyID
	time.Sleep(time.Second) // settled: nothing left to requeue soon
	if err := env.Client.Status().Patch(context.Background(), c, rawMerge(t, map[string]any{
		"status": map[string]any{"phase": "Enabled", "importParameters": nil}})); err != nil {
		t.Fatal(err)
	}
	c = h.eventually("byok", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Phase).To(Equal(v1alpha1.PhasePendingImport))
		g.Expect(c.Status.ImportParameters).NotTo(BeNil())
	})
	if c.Status.KeyID != id {
		t.Errorf("keyID %s after the edit, want %s", c.Status.KeyID, id)
	}
}
