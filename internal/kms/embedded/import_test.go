package embedded

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
)

func (f *fixture) params(t *testing.T, id string) kms.ImportParameters {
	t.Helper()
	p, err := f.p.ImportParameters(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func random(t *testing.T, n int) []byte {
	t.Helper()
	b, err := randomBytes(n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestImportFlow(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.create(t, "AES_256", kms.OriginExternal)
	f.writes.n.Store(0)
	params := f.params(t, k.ID)
	if want := f.clock.Now().Add(24 * time.Hour); params.ExpiresAt.Sub(want).Abs() > time.Second || params.ImportToken == "" {
		t.Errorf("parameters %+v, want a token valid for 24h", params)
	}
	if _, ok := f.secret(t, k.ID).Data[wrappingKeyField]; !ok {
		t.Error("the wrapping private key is not stored")
	}
	material := random(t, 32)
	if err := f.p.ImportMaterial(context.Background(), k.ID, params.ImportToken, kmstest.Wrap(t, params, material), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if n := f.writes.n.Load(); n != 2 {
		t.Errorf("parameters and import took %d writes, want 2", n)
	}
	// A retry of the same import (its answer lost) succeeds and changes nothing.
	if err := f.p.ImportMaterial(context.Background(), k.ID, params.ImportToken, kmstest.Wrap(t, params, material), time.Time{}); err != nil {
		t.Errorf("repeated import: %v", err)
	}
	if n := f.writes.n.Load(); n != 2 {
		t.Errorf("a repeated import wrote %d times in all, want 2", n)
	}
	got, _ := f.p.Observe(context.Background(), k.ID)
	if got.State != kms.StateEnabled || !got.HasMaterial || !got.MaterialExpiresAt.IsZero() {
		t.Errorf("after import: %+v", got)
	}
	s := f.secret(t, k.ID)
	if _, ok := s.Data[wrappingKeyField]; ok {
		t.Error("the wrapping key outlived the import")
	}
	opened, err := f.p.sealer.open(k.ID, s.Data[materialField])
	if err != nil || !bytes.Equal(opened, material) {
		t.Fatalf("stored material does not open to what was imported: %v", err)
	}
	for field, v := range s.Data {
		if bytes.Contains(v, material) {
			t.Errorf("field %s holds the imported material in plaintext", field)
		}
	}

	// The seed: a key with imported material comes back Disabled from a canceled deletion.
	for _, c := range []kmstest.Call{kmstest.Schedule, kmstest.Cancel} {
		if err := f.do(k.ID, c); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.state(t, k.ID); got != kms.StateDisabled {
		t.Errorf("imported key after cancel: %s, want Disabled", got)
	}
}

func TestImportRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	cases := map[string]struct {
		spec, origin string
		// prepare returns the token and wrapped material to import.
		prepare func(t *testing.T, id string) (string, []byte, time.Time)
		code    kms.ImportErrorCode
		check   func(error) bool
	}{
		"WrongToken": {spec: "AES_256", origin: kms.OriginExternal, code: kms.ImportTokenInvalid,
			prepare: func(t *testing.T, id string) (string, []byte, time.Time) {
				p := f.params(t, id)
				return "not-" + p.ImportToken, kmstest.Wrap(t, p, random(t, 32)), time.Time{}
			}},
		"SupersededToken": {spec: "AES_256", origin: kms.OriginExternal, code: kms.ImportTokenInvalid,
			prepare: func(t *testing.T, id string) (string, []byte, time.Time) {
				old := f.params(t, id)
				f.params(t, id)
				return old.ImportToken, kmstest.Wrap(t, old, random(t, 32)), time.Time{}
			}},
		"ExpiredToken": {spec: "AES_256", origin: kms.OriginExternal, code: kms.ImportTokenInvalid,
			prepare: func(t *testing.T, id string) (string, []byte, time.Time) {
				p := f.params(t, id)
				f.clock.Step(24 * time.Hour)
				return p.ImportToken, kmstest.Wrap(t, p, random(t, 32)), time.Time{}
			}},
		"TokenOfAnotherKey": {spec: "AES_256", origin: kms.OriginExternal, code: kms.ImportTokenInvalid,
			prepare: func(t *testing.T, _ string) (string, []byte, time.Time) {
				other := f.create(t, "AES_256", kms.OriginExternal)
				p := f.params(t, other.ID)
				return p.ImportToken, kmstest.Wrap(t, p, random(t, 32)), time.Time{}
			}},
		"WrongLength": {spec: "AES_256", origin: kms.OriginExternal, code: kms.ImportMaterialInvalid,
			prepare: func(t *testing.T, id string) (string, []byte, time.Time) {
				p := f.params(t, id)
				return p.ImportToken, kmstest.Wrap(t, p, random(t, 16)), time.Time{}
			}},
		"SM4Length": {spec: "SM4", origin: kms.OriginExternal, code: kms.ImportMaterialInvalid,
			prepare: func(t *testing.T, id string) (string, []byte, time.Time) {
				p := f.params(t, id)
				return p.ImportToken, kmstest.Wrap(t, p, random(t, 32)), time.Time{}
			}},
		"NotWrapped": {spec: "AES_256", origin: kms.OriginExternal, code: kms.ImportMaterialInvalid,
			prepare: func(t *testing.T, id string) (string, []byte, time.Time) {
				return f.params(t, id).ImportToken, random(t, 256), time.Time{}
			}},
		"ExpiryInThePast": {spec: "AES_256", origin: kms.OriginExternal, check: func(err error) bool {
			var r *kms.RejectedError
			return errors.As(err, &r)
		}, prepare: func(t *testing.T, id string) (string, []byte, time.Time) {
			p := f.params(t, id)
			return p.ImportToken, kmstest.Wrap(t, p, random(t, 32)), f.clock.Now().Add(-time.Second)
		}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			k := f.create(t, tc.spec, tc.origin)
			token, wrapped, expiresAt := tc.prepare(t, k.ID)
			err := f.p.ImportMaterial(ctx, k.ID, token, wrapped, expiresAt)
			if tc.check != nil {
				if !tc.check(err) {
					t.Fatalf("got %v", err)
				}
			} else if ie := kms.AsImportError(err); ie == nil || ie.Code != tc.code {
				t.Fatalf("got %v, want ImportError %s", err, tc.code)
			}
			if got := f.state(t, k.ID); got != kms.StatePendingImport {
				t.Errorf("after a refused import: %s, want PendingImport", got)
			}
		})
	}

	t.Run("NotExternal", func(t *testing.T) {
		k := f.create(t, "AES_256", kms.OriginKMS)
		if _, err := f.p.ImportParameters(ctx, k.ID); !kms.IsTerminal(err) {
			t.Errorf("import parameters for a KMS key: %v, want a terminal refusal", err)
		}
	})
	t.Run("AsymmetricUnsupported", func(t *testing.T) {
		k := f.create(t, "RSA_2048", kms.OriginExternal)
		if _, err := f.p.ImportParameters(ctx, k.ID); !kms.IsUnsupported(err) {
			t.Errorf("import parameters for an RSA key: %v, want Unsupported", err)
		}
	})
	t.Run("NotPendingImport", func(t *testing.T) {
		k := f.create(t, "AES_256", kms.OriginExternal)
		if err := f.do(k.ID, kmstest.Schedule); err != nil {
			t.Fatal(err)
		}
		var se *kms.StateError
		if _, err := f.p.ImportParameters(ctx, k.ID); !errors.As(err, &se) {
			t.Errorf("import parameters while PendingDeletion: %v, want StateError", err)
		}
	})
}

// TestMaterialExpiry imports material that expires, lets the clock pass it, and imports again:
// the same material is taken back, other material is refused.
func TestMaterialExpiry(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	k := f.create(t, "AES_256", kms.OriginExternal)
	material := random(t, 32)
	params := f.params(t, k.ID)
	expiry := f.clock.Now().Add(time.Hour).Truncate(time.Second)
	if err := f.p.ImportMaterial(ctx, k.ID, params.ImportToken, kmstest.Wrap(t, params, material), expiry); err != nil {
		t.Fatal(err)
	}
	if err := f.do(k.ID, kmstest.Disable); err != nil {
		t.Fatal(err)
	}
	got, _ := f.p.Observe(ctx, k.ID)
	if !got.MaterialExpiresAt.Equal(expiry) {
		t.Errorf("material expiry %v, want %v", got.MaterialExpiresAt, expiry)
	}

	next, err := f.p.ReapDue(ctx)
	if err != nil || !next.Equal(expiry) {
		t.Fatalf("reaper's next time %v (%v), want the material expiry %v", next, err, expiry)
	}
	f.writes.n.Store(0)
	f.clock.Step(time.Hour)
	if _, err := f.p.ReapDue(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.state(t, k.ID); got != kms.StatePendingImport {
		t.Fatalf("after the material expired: %s, want PendingImport", got)
	}
	if _, ok := f.secret(t, k.ID).Data[materialField]; ok || f.writes.n.Load() != 1 {
		t.Errorf("expired material still stored (%v), or expiry took %d writes, want 1", ok, f.writes.n.Load())
	}
	select {
	case id := <-f.p.Changes():
		if id != k.ID {
			t.Errorf("change reported for %s", id)
		}
	default:
		t.Error("material expiry was not reported as a change")
	}

	params = f.params(t, k.ID)
	err = f.p.ImportMaterial(ctx, k.ID, params.ImportToken, kmstest.Wrap(t, params, random(t, 32)), time.Time{})
	if ie := kms.AsImportError(err); ie == nil || ie.Code != kms.ImportMaterialMismatch {
		t.Fatalf("re-import of other material: %v, want MaterialMismatch", err)
	}
	if err := f.p.ImportMaterial(ctx, k.ID, params.ImportToken, kmstest.Wrap(t, params, material), time.Time{}); err != nil {
		t.Fatalf("re-import of the same material: %v", err)
	}
	if got := f.state(t, k.ID); got != kms.StateEnabled {
		t.Errorf("after re-import: %s, want Enabled", got)
	}
}
