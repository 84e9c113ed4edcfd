package kmstest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Wrap wraps material as a user does: RSA-OAEP SHA-256 under the issued public key.
func Wrap(t testing.TB, p kms.ImportParameters, material []byte) []byte {
	t.Helper()
	pub, err := x509.ParsePKIXPublicKey(p.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok || rsaPub.N.BitLen() != 2048 {
		t.Fatalf("wrapping key is %T, want RSA 2048", pub)
	}
	w, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, material, nil)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// params issues import parameters for a key, failing the test when the provider refuses.
func params(t *testing.T, imp kms.Importer, id string) kms.ImportParameters {
	t.Helper()
	p, err := imp.ImportParameters(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func importFlow(t *testing.T, f Fixture) {
	imp := optional[kms.Importer](t, f)
	ctx := context.Background()
	k := create(t, f, "AES_256", kms.OriginExternal)
	p := params(t, imp, k.ID)
	if want := f.Now().Add(24 * time.Hour); p.ExpiresAt.Sub(want).Abs() > time.Hour || p.ImportToken == "" {
		t.Errorf("parameters: token %q expiring %v, want about %v", p.ImportToken, p.ExpiresAt, want)
	}
	if err := imp.ImportMaterial(ctx, k.ID, p.ImportToken, Wrap(t, p, random(32)), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := state(t, f, k.ID); got != kms.StateEnabled {
		t.Fatalf("after import: %s", got)
	}
	// With material, a canceled deletion leaves the key Disabled (the seed).
	doAll(t, f, k.ID, Schedule, Cancel)
	if got := state(t, f, k.ID); got != kms.StateDisabled {
		t.Errorf("imported key after cancel: %s, want Disabled", got)
	}
	kmsKey := create(t, f, "AES_256", kms.OriginKMS)
	if _, err := imp.ImportParameters(ctx, kmsKey.ID); err == nil {
		t.Error("import parameters for a KMS-origin key were issued")
	}
}

func importRefusals(t *testing.T, f Fixture) {
	imp := optional[kms.Importer](t, f)
	ctx := context.Background()
	k := create(t, f, "AES_256", kms.OriginExternal)
	p := params(t, imp, k.ID)
	for name, tc := range map[string]struct {
		token   string
		wrapped []byte
		code    kms.ImportErrorCode
	}{
		"WrongToken":  {"not-" + p.ImportToken, Wrap(t, p, random(32)), kms.ImportTokenInvalid},
		"WrongLength": {p.ImportToken, Wrap(t, p, random(16)), kms.ImportMaterialInvalid},
	} {
		err := imp.ImportMaterial(ctx, k.ID, tc.token, tc.wrapped, time.Time{})
		if ie := kms.AsImportError(err); ie == nil || ie.Code != tc.code {
			t.Errorf("%s: %v, want ImportError %s", name, err, tc.code)
		}
	}
	if got := state(t, f, k.ID); got != kms.StatePendingImport {
		t.Errorf("after refused imports: %s, want PendingImport", got)
	}
}

func materialExpiry(t *testing.T, f Fixture) {
	imp := optional[kms.Importer](t, f)
	ctx := context.Background()
	k := create(t, f, "AES_256", kms.OriginExternal)
	material := random(32)
	p := params(t, imp, k.ID)
	expiry := f.Now().Add(2 * time.Hour).Truncate(time.Second)
	if err := imp.ImportMaterial(ctx, k.ID, p.ImportToken, Wrap(t, p, material), expiry); err != nil {
		t.Fatal(err)
	}
	got, err := f.Provider.Observe(ctx, k.ID)
	if err != nil || !got.MaterialExpiresAt.Equal(expiry) {
		t.Errorf("material expiry %v, want %v (%v)", got.MaterialExpiresAt, expiry, err)
	}
	f.Advance(t, 2*time.Hour+time.Minute)
	if got := state(t, f, k.ID); got != kms.StatePendingImport && (f.Late == 0 || got != kms.StateEnabled) {
		t.Fatalf("after the material expired: %s, want PendingImport (or still Enabled, from a KMS that may be late)", got)
	}
	f.Advance(t, f.Late)
	if got := state(t, f, k.ID); got != kms.StatePendingImport {
		t.Fatalf("%v after the material expired: %s, want PendingImport", f.Late+2*time.Minute, got)
	}
	p = params(t, imp, k.ID)
	err = imp.ImportMaterial(ctx, k.ID, p.ImportToken, Wrap(t, p, random(32)), time.Time{})
	if ie := kms.AsImportError(err); ie == nil || ie.Code != kms.ImportMaterialMismatch {
		t.Errorf("re-import of other material: %v, want MaterialMismatch", err)
	}
	if err := imp.ImportMaterial(ctx, k.ID, p.ImportToken, Wrap(t, p, material), time.Time{}); err != nil {
		t.Fatalf("re-import of the same material: %v", err)
	}
	if got := state(t, f, k.ID); got != kms.StateEnabled {
		t.Errorf("after re-import: %s", got)
	}
}
