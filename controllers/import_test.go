package controllers

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// wrapFor wraps material as a user does with openssl, under the public key the resource
// publishes, and returns it with the token to go beside it.
func wrapFor(t testing.TB, c *v1alpha1.CustomerMasterKey, material []byte) (wrapped []byte, token string) {
	t.Helper()
	p := c.Status.ImportParameters
	if p == nil {
		t.Fatalf("%s publishes no import parameters", c.Name)
	}
	der, err := base64.StdEncoding.DecodeString(p.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return kmstest.Wrap(t, kms.ImportParameters{PublicKey: der}, material), p.ImportToken
}

func randomMaterial(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// putSecret creates or replaces the keyMaterial Secret.
func (h *harness) putSecret(name string, data map[string][]byte) {
	h.t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns}}
	_ = env.Client.Delete(context.Background(), s)
	s.Data = data
	if err := env.Client.Create(context.Background(), s); err != nil {
		h.t.Fatal(err)
	}
}

func materialSecret(wrapped []byte, token string) map[string][]byte {
	return map[string][]byte{v1alpha1.SecretKeyEncryptedKeyMaterial: wrapped, v1alpha1.SecretKeyImportToken: []byte(token)}
}

func keyMaterial(secret string) map[string]any {
	return map[string]any{"keyMaterial": map[string]any{"secretRef": map[string]any{"name": secret}}}
}

// waitImportParameters waits until the resource publishes parameters other than old.
func (h *harness) waitImportParameters(name, old string) *v1alpha1.CustomerMasterKey {
	h.t.Helper()
	return h.eventually(name, func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ImportParameters).NotTo(BeNil())
		g.Expect(c.Status.ImportParameters.ImportToken).NotTo(Equal(old))
	})
}

// syncBuffer is a log sink safe for the manager's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// TestImportFlow brings an External key from PendingImport to Enabled with wrapped material
// from a Secret, then schedules and cancels its deletion: with imported material it comes back
// Disabled, as the seed says. Neither the material nor the wrapped material shows in logs,
// events or status.
func TestImportFlow(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	logs := &syncBuffer{}
	h.start(managerOptions{logs: logs})
	h.create(h.cmk("byok", testenv.External))
	c := h.waitImportParameters("byok", "")
	p := c.Status.ImportParameters
	if c.Status.Phase != v1alpha1.PhasePendingImport || p.WrappingAlgorithm != "RSAES_OAEP_SHA_256" ||
		p.ExpiresAt.Sub(h.clock.Now().Add(24*time.Hour)).Abs() > time.Second {
		t.Errorf("import parameters %+v in phase %s", p, c.Status.Phase)
	}
	if r := cond(c, v1alpha1.ConditionReady); r.Reason != v1alpha1.ReasonPendingImport {
		t.Errorf("Ready while waiting for material: %+v", r)
	}

	material := randomMaterial(t, 32)
	wrapped, token := wrapFor(t, c, material)
	h.putSecret("byok-material", materialSecret(wrapped, token))
	h.patch("byok", keyMaterial("byok-material"))
	c = h.waitPhase("byok", v1alpha1.PhaseEnabled)
	if c.Status.ImportParameters != nil || c.Status.MaterialExpiresAt != nil || cond(c, v1alpha1.ConditionReady).Status != metav1.ConditionTrue {
		t.Errorf("status after import: %+v", c.Status)
	}
	NewWithT(t).Eventually(func() []string { return h.events("byok") }).WithTimeout(timeout).Should(ContainElement(v1alpha1.EventMaterialImported))

	h.patch("byok", schedule)
	h.waitPhase("byok", v1alpha1.PhasePendingDeletion)
	h.patch("byok", cancel)
	h.waitPhase("byok", v1alpha1.PhaseDisabled)

	// Nothing secret leaks: not the material, not the wrapped material, in any encoding.
	status, _ := json.Marshal(h.get("byok").Status)
	var events eventsv1.EventList
	if err := env.Client.List(context.Background(), &events, client.InNamespace(h.ns)); err != nil {
		t.Fatal(err)
	}
	eventText, _ := json.Marshal(events.Items)
	for what, text := range map[string][]byte{"status": status, "events": eventText, "logs": logs.Bytes()} {
		for _, secret := range [][]byte{material, wrapped} {
			for _, form := range [][]byte{secret, []byte(base64.StdEncoding.EncodeToString(secret)), []byte(hex.EncodeToString(secret))} {
				if bytes.Contains(text, form) {
					t.Errorf("%s contain key material", what)
				}
			}
		}
	}
	if len(logs.Bytes()) == 0 {
		t.Error("no logs captured: the leak check proves nothing")
	}
}

// TestImportWithEnabledFalse imports material into a key meant to stay disabled.
func TestImportWithEnabledFalse(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("quiet", testenv.External, func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled = false }))
	c := h.waitImportParameters("quiet", "")
	wrapped, token := wrapFor(t, c, randomMaterial(t, 32))
	h.putSecret("quiet-material", materialSecret(wrapped, token))
	h.patch("quiet", keyMaterial("quiet-material"))
	h.waitPhase("quiet", v1alpha1.PhaseDisabled)
}

// TestMaterialExpiry imports material that expires, lets the fake clock pass it, and brings
// the same material back with fresh parameters; other material is refused.
func TestMaterialExpiry(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{importRetry: 200 * time.Millisecond})
	h.create(h.cmk("expiring", testenv.External))
	c := h.waitImportParameters("expiring", "")
	material := randomMaterial(t, 32)
	wrapped, token := wrapFor(t, c, material)
	h.putSecret("expiring-material", materialSecret(wrapped, token))
	expiry := h.clock.Now().Add(time.Hour)
	h.patch("expiring", map[string]any{"keyMaterial": map[string]any{
		"secretRef": map[string]any{"name": "expiring-material"}, "expiresAt": expiry.Format(time.RFC3339)}})
	c = h.waitPhase("expiring", v1alpha1.PhaseEnabled)
	if c.Status.MaterialExpiresAt == nil || !c.Status.MaterialExpiresAt.Time.Equal(expiry) {
		t.Errorf("materialExpiresAt %v, want %v", c.Status.MaterialExpiresAt, expiry)
	}

	// The material expires: the key is PendingImport again, and the old Secret's token is
	// refused with fresh parameters published.
	h.clock.Step(time.Hour + time.Second)
	c = h.eventually("expiring", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Phase).To(Equal(v1alpha1.PhasePendingImport))
		g.Expect(cond(c, v1alpha1.ConditionSynced).Reason).To(BeElementOf(v1alpha1.ReasonExpiryPassed, v1alpha1.ReasonImportTokenInvalid))
	})
	if c.Status.MaterialExpiresAt != nil {
		t.Errorf("materialExpiresAt %v kept after expiry", c.Status.MaterialExpiresAt)
	}
	// The spec's expiry has passed too; drop it, and the import fails on the old token.
	h.patch("expiring", map[string]any{"keyMaterial": map[string]any{"expiresAt": nil}})
	c = h.eventually("expiring", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionSynced).Reason).To(Equal(v1alpha1.ReasonImportTokenInvalid))
		g.Expect(c.Status.ImportParameters).NotTo(BeNil())
		g.Expect(c.Status.ImportParameters.ImportToken).NotTo(Equal(token))
	})

	// Other material is refused; the same material, wrapped again, is taken back.
	other, otherToken := wrapFor(t, c, randomMaterial(t, 32))
	h.putSecret("expiring-material", materialSecret(other, otherToken))
	h.eventually("expiring", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionSynced).Reason).To(Equal(v1alpha1.ReasonMaterialMismatch))
	})
	again, againToken := wrapFor(t, h.get("expiring"), material)
	h.putSecret("expiring-material", materialSecret(again, againToken))
	h.waitPhase("expiring", v1alpha1.PhaseEnabled)
}

// TestImportFailures checks each way an import can be refused: the key stays PendingImport,
// both conditions say what to do, a Warning event is sent once, and nothing loops.
func TestImportFailures(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	type setup func(t *testing.T, name string, c *v1alpha1.CustomerMasterKey) map[string]any
	cases := map[string]struct {
		setup  setup
		reason string
		says   string
	}{
		"SecretMissing": {reason: v1alpha1.ReasonSecretNotFound, says: "was not found, or does not hold non-empty keys encryptedKeyMaterial (the wrapped material) and importToken",
			setup: func(_ *testing.T, name string, _ *v1alpha1.CustomerMasterKey) map[string]any {
				return keyMaterial(name + "-nothing")
			}},
		"WrongKeyNames": {reason: v1alpha1.ReasonSecretNotFound, says: "was not found, or does not hold non-empty keys encryptedKeyMaterial (the wrapped material) and importToken",
			setup: func(t *testing.T, name string, c *v1alpha1.CustomerMasterKey) map[string]any {
				wrapped, token := wrapFor(t, c, randomMaterial(t, 32))
				h.putSecret(name, map[string][]byte{"material": wrapped, "token": []byte(token)})
				return keyMaterial(name)
			}},
		"TokenOfAnotherKey": {reason: v1alpha1.ReasonImportTokenInvalid, says: "wrap the material again with the publicKey now in status.importParameters",
			setup: func(t *testing.T, name string, _ *v1alpha1.CustomerMasterKey) map[string]any {
				h.create(h.cmk(name+"-other", testenv.External))
				other := h.waitImportParameters(name+"-other", "")
				wrapped, token := wrapFor(t, other, randomMaterial(t, 32))
				h.putSecret(name, materialSecret(wrapped, token))
				return keyMaterial(name)
			}},
		"WrongLength": {reason: v1alpha1.ReasonMaterialInvalid, says: "the unwrapped material is 16 bytes; AES_256 keys take 32",
			setup: func(t *testing.T, name string, c *v1alpha1.CustomerMasterKey) map[string]any {
				wrapped, token := wrapFor(t, c, randomMaterial(t, 16))
				h.putSecret(name, materialSecret(wrapped, token))
				return keyMaterial(name)
			}},
		"NotWrapped": {reason: v1alpha1.ReasonMaterialInvalid, says: "does not unwrap",
			setup: func(t *testing.T, name string, c *v1alpha1.CustomerMasterKey) map[string]any {
				h.putSecret(name, materialSecret(randomMaterial(t, 256), c.Status.ImportParameters.ImportToken))
				return keyMaterial(name)
			}},
		"ExpiryPassed": {reason: v1alpha1.ReasonExpiryPassed, says: "set a time in the future",
			setup: func(t *testing.T, name string, c *v1alpha1.CustomerMasterKey) map[string]any {
				wrapped, token := wrapFor(t, c, randomMaterial(t, 32))
				h.putSecret(name, materialSecret(wrapped, token))
				return map[string]any{"keyMaterial": map[string]any{"secretRef": map[string]any{"name": name},
					"expiresAt": h.clock.Now().Add(-time.Minute).Format(time.RFC3339)}}
			}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := "bad-" + map[string]string{"SecretMissing": "a", "WrongKeyNames": "b", "TokenOfAnotherKey": "c",
				"WrongLength": "d", "NotWrapped": "e", "ExpiryPassed": "f"}[name]
			h.create(h.cmk(res, testenv.External))
			c := h.waitImportParameters(res, "")
			h.patch(res, tc.setup(t, res, c))
			c = h.eventually(res, func(g Gomega, c *v1alpha1.CustomerMasterKey) {
				g.Expect(cond(c, v1alpha1.ConditionSynced).Reason).To(Equal(tc.reason))
			})
			for _, typ := range []string{v1alpha1.ConditionReady, v1alpha1.ConditionSynced} {
				if got := cond(c, typ); got.Status != metav1.ConditionFalse || !bytes.Contains([]byte(got.Message), []byte(tc.says)) {
					t.Errorf("%s: %+v, want a message saying %q", typ, got, tc.says)
				}
			}
			if c.Status.Phase != v1alpha1.PhasePendingImport {
				t.Errorf("phase %s after a refused import, want PendingImport", c.Status.Phase)
			}
			NewWithT(t).Eventually(func() []string { return h.events(res) }).WithTimeout(timeout).Should(ContainElement(v1alpha1.EventImportFailed))
			rv := c.ResourceVersion
			time.Sleep(time.Second)
			if now := h.get(res); now.ResourceVersion != rv {
				t.Errorf("status kept changing after a refused import")
			}
		})
	}
}

// TestImportRetriesKeepParameters retries refused imports quickly. A token the operator never
// published is refused once with one Warning, and the published parameters stay as they are,
// so the user has their whole validity to wrap material. Only when the KMS refuses the
// published token itself (superseded outside the operator) are new parameters published, once.
func TestImportRetriesKeepParameters(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{importRetry: 200 * time.Millisecond})
	h.create(h.cmk("patient", testenv.External))
	c := h.waitImportParameters("patient", "")
	first := c.Status.ImportParameters.ImportToken
	wrapped, _ := wrapFor(t, c, randomMaterial(t, 32))
	h.putSecret("patient-material", materialSecret(wrapped, "a-token-nobody-published"))
	h.patch("patient", keyMaterial("patient-material"))
	h.eventually("patient", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionSynced).Reason).To(Equal(v1alpha1.ReasonImportTokenInvalid))
	})
	time.Sleep(1500 * time.Millisecond) // several retries
	if got := h.get("patient").Status.ImportParameters.ImportToken; got != first {
		t.Errorf("import parameters replaced while retrying an unpublished token")
	}
	if n := countOf(h.events("patient"), v1alpha1.EventImportFailed); n != 1 {
		t.Errorf("%d ImportFailed warnings over several retries, want 1: %v", n, h.events("patient"))
	}

	// The KMS stops accepting the published token: new parameters, once.
	imp := kms.Importer(h.kms)
	if _, err := imp.ImportParameters(context.Background(), c.Status.KeyID); err != nil {
		t.Fatal(err)
	}
	wrapped, token := wrapFor(t, c, randomMaterial(t, 32))
	h.putSecret("patient-material", materialSecret(wrapped, token))
	c = h.waitImportParameters("patient", first)
	second := c.Status.ImportParameters.ImportToken
	time.Sleep(1500 * time.Millisecond)
	if got := h.get("patient").Status.ImportParameters.ImportToken; got != second {
		t.Errorf("import parameters replaced again at a retry")
	}
	if n := countOf(h.events("patient"), v1alpha1.EventImportParameters); n != 2 {
		t.Errorf("%d sets of import parameters published, want 2: %v", n, h.events("patient"))
	}
	wrapped, token = wrapFor(t, c, randomMaterial(t, 32))
	h.putSecret("patient-material", materialSecret(wrapped, token))
	h.waitPhase("patient", v1alpha1.PhaseEnabled)
}
