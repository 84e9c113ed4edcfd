// Package kmstest is the conformance suite every KMS provider passes: the lifecycle of API.md
// call by Call, cancel outcomes, idempotency, deletion at the date, import and material expiry.
// A provider's tests call Run with a fixture that builds a fresh provider and can move the KMS's
// time forward.
package kmstest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Fixture is one provider under test.
type Fixture struct {
	Provider kms.Provider
	// Now is the KMS's current time.
	Now func() time.Time
	// Late is how long after its time the KMS may act on something that came due: zero for
	// one that acts at once; Huawei removes expired material "within 24 h".
	Late time.Duration
	// Advance moves the KMS's time forward by d and lets it act on whatever came due
	// (deletion dates, material expiry) before it returns.
	Advance func(t *testing.T, d time.Duration)
}

// Run runs every case against fresh providers from newFixture.
func Run(t *testing.T, newFixture func(t *testing.T) Fixture) {
	t.Run("Lifecycle", func(t *testing.T) { lifecycle(t, newFixture(t)) })
	t.Run("CreateIsIdempotent", func(t *testing.T) { createIdempotent(t, newFixture(t)) })
	t.Run("ObserveUnknownKey", func(t *testing.T) { observeUnknown(t, newFixture(t)) })
	t.Run("LookupByToken", func(t *testing.T) { lookupByToken(t, newFixture(t)) })
	t.Run("AliasInUse", func(t *testing.T) { aliasInUse(t, newFixture(t)) })
	t.Run("OwnerAndClaim", func(t *testing.T) { ownerAndClaim(t, newFixture(t)) })
	t.Run("DeletionAtDate", func(t *testing.T) { deletionAtDate(t, newFixture(t)) })
	t.Run("Import", func(t *testing.T) { importFlow(t, newFixture(t)) })
	t.Run("ImportRefusals", func(t *testing.T) { importRefusals(t, newFixture(t)) })
	t.Run("MaterialExpiry", func(t *testing.T) { materialExpiry(t, newFixture(t)) })
}

var keys int

func create(t *testing.T, f Fixture, spec, origin string) kms.Key {
	t.Helper()
	keys++
	k, err := f.Provider.Create(context.Background(), kms.CreateRequest{
		Alias: fmt.Sprintf("conformance/%s/%d-%d", t.Name(), time.Now().UnixNano(), keys), KeySpec: spec,
		KeyUsage: "ENCRYPT_DECRYPT", Origin: origin, Token: fmt.Sprintf("token-%d-%d", time.Now().UnixNano(), keys),
	})
	if err != nil {
		t.Fatalf("Create(%s, %s): %v", spec, origin, err)
	}
	return k
}

func state(t *testing.T, f Fixture, id string) kms.State {
	t.Helper()
	k, err := f.Provider.Observe(context.Background(), id)
	if kms.IsNotFound(err) {
		return kms.StateDeleted
	}
	if err != nil {
		t.Fatal(err)
	}
	return k.State
}

// Call is one lifecycle Call, by name.
type Call string

// The lifecycle calls.
const (
	Enable   Call = "enable"
	Disable  Call = "disable"
	Schedule Call = "schedule"
	Cancel   Call = "cancel"
)

// Do makes a lifecycle call (schedule with 7 pending days).
func Do(p kms.Provider, id string, c Call) error {
	ctx := context.Background()
	switch c {
	case Enable:
		return p.Enable(ctx, id)
	case Disable:
		return p.Disable(ctx, id)
	case Schedule:
		return p.ScheduleDeletion(ctx, id, 7)
	case Cancel:
		return p.CancelDeletion(ctx, id)
	}
	panic(c)
}

func do(f Fixture, id string, c Call) error { return Do(f.Provider, id, c) }

// lifecycle checks every call from every state against API.md: the state after it, or a
// StateError when the state does not allow it. Asking for the state a key is in succeeds.
func lifecycle(t *testing.T, f Fixture) {
	type start struct {
		origin string
		path   []Call
	}
	starts := map[kms.State]start{
		kms.StateEnabled:         {kms.OriginKMS, nil},
		kms.StateDisabled:        {kms.OriginKMS, []Call{Disable}},
		kms.StatePendingDeletion: {kms.OriginKMS, []Call{Schedule}},
		kms.StatePendingImport:   {kms.OriginExternal, nil},
	}
	// want[from][call] is the state after the call; "" means refused.
	want := map[kms.State]map[Call]kms.State{
		kms.StateEnabled:         {Enable: kms.StateEnabled, Disable: kms.StateDisabled, Schedule: kms.StatePendingDeletion, Cancel: kms.StateEnabled},
		kms.StateDisabled:        {Enable: kms.StateEnabled, Disable: kms.StateDisabled, Schedule: kms.StatePendingDeletion, Cancel: kms.StateDisabled},
		kms.StatePendingDeletion: {Enable: "", Disable: "", Schedule: kms.StatePendingDeletion, Cancel: kms.StateDisabled},
		kms.StatePendingImport:   {Enable: "", Disable: "", Schedule: kms.StatePendingDeletion, Cancel: kms.StatePendingImport},
	}
	for from, s := range starts {
		for c, after := range want[from] {
			t.Run(fmt.Sprintf("%s/%s", from, c), func(t *testing.T) {
				k := create(t, f, "AES_256", s.origin)
				for _, step := range s.path {
					if err := do(f, k.ID, step); err != nil {
						t.Fatalf("reaching %s: %s: %v", from, step, err)
					}
				}
				if got := state(t, f, k.ID); got != from {
					t.Fatalf("start state %s, want %s", got, from)
				}
				err := do(f, k.ID, c)
				if after == "" {
					var se *kms.StateError
					if !errors.As(err, &se) {
						t.Fatalf("%s from %s: got %v, want a StateError", c, from, err)
					}
					after = from
				} else if err != nil {
					t.Fatalf("%s from %s: %v", c, from, err)
				}
				if got := state(t, f, k.ID); got != after {
					t.Errorf("%s from %s: %s, want %s", c, from, got, after)
				}
			})
		}
	}
	t.Run("CancelLeavesExternalWithoutMaterialPendingImport", func(t *testing.T) {
		k := create(t, f, "AES_256", kms.OriginExternal)
		doAll(t, f, k.ID, Schedule, Cancel)
		if got := state(t, f, k.ID); got != kms.StatePendingImport {
			t.Errorf("after Cancel: %s, want PendingImport", got)
		}
	})
	t.Run("DeletionDate", func(t *testing.T) {
		k := create(t, f, "AES_256", kms.OriginKMS)
		if err := f.Provider.ScheduleDeletion(context.Background(), k.ID, 30); err != nil {
			t.Fatal(err)
		}
		got, err := f.Provider.Observe(context.Background(), k.ID)
		want := f.Now().Add(30 * 24 * time.Hour)
		if err != nil || got.DeletionDate.Sub(want).Abs() > time.Minute {
			t.Errorf("deletion date %v, want about %v (%v)", got.DeletionDate, want, err)
		}
	})
}

func createIdempotent(t *testing.T, f Fixture) {
	req := kms.CreateRequest{Alias: fmt.Sprintf("conformance/idem/%d", time.Now().UnixNano()), KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: fmt.Sprintf("idem-%d", time.Now().UnixNano())}
	a, err := f.Provider.Create(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.Provider.Create(context.Background(), req)
	if err != nil || a.ID != b.ID {
		t.Errorf("Create twice with one token: %s then %s (%v)", a.ID, b.ID, err)
	}
}

// lookupByToken checks the operator can tell "no key made yet" from "a key whose ID was lost":
// Lookup finds the key a Create with the token made, in any state, and nothing for a token no
// Create used.
func lookupByToken(t *testing.T, f Fixture) {
	ctx := context.Background()
	token := fmt.Sprintf("lookup-%d", time.Now().UnixNano())
	if k, err := f.Provider.Lookup(ctx, token); !kms.IsNotFound(err) {
		t.Fatalf("Lookup before any Create: %+v, %v; want NotFoundError", k, err)
	}
	made, err := f.Provider.Create(ctx, kms.CreateRequest{Alias: "conformance/" + token, KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	doAll(t, f, made.ID, Disable, Schedule)
	found, err := f.Provider.Lookup(ctx, token)
	if err != nil || found.ID != made.ID || found.State != kms.StatePendingDeletion {
		t.Errorf("Lookup after Create: %s (%s), %v; want %s PendingDeletion", found.ID, found.State, err, made.ID)
	}
	if _, err := f.Provider.Lookup(ctx, token+"-other"); !kms.IsNotFound(err) {
		t.Errorf("Lookup of another token: %v, want NotFoundError", err)
	}
}

// aliasInUse checks a second key with an alias is refused with the holder named for the
// caller, but not in the message, which may reach a tenant who must not learn it.
func aliasInUse(t *testing.T, f Fixture) {
	ctx := context.Background()
	req := kms.CreateRequest{Alias: fmt.Sprintf("conformance/alias/%d", time.Now().UnixNano()), KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: fmt.Sprintf("alias-a-%d", time.Now().UnixNano())}
	first, err := f.Provider.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	req.Token += "-b"
	_, err = f.Provider.Create(ctx, req)
	inUse := kms.AsAliasInUse(err)
	if inUse == nil || inUse.KeyID != first.ID {
		t.Fatalf("a second key with alias %s: %v, want an AliasInUseError naming %s", req.Alias, err, first.ID)
	}
	if strings.Contains(err.Error(), first.ID) {
		t.Errorf("the refusal's message names the holder: %q", err)
	}
	if _, err := f.Provider.Lookup(ctx, req.Token); !kms.IsNotFound(err) {
		t.Errorf("the refused create made a key: %v", err)
	}
}

// ownerAndClaim checks the KMS records a key's owner from Create, and that Claim replaces it
// only from the owner the claimant saw.
func ownerAndClaim(t *testing.T, f Fixture) {
	ctx := context.Background()
	n := time.Now().UnixNano()
	first := kms.Owner{Namespace: "team-a", Name: fmt.Sprintf("a-resource-whose-name-is-too-long-for-a-tag-%d", n), UID: fmt.Sprintf("00000000-0000-4000-8000-%012d", n%1e12)}
	k, err := f.Provider.Create(ctx, kms.CreateRequest{Alias: fmt.Sprintf("conformance/owner/%d", n), KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: first.UID, Owner: first})
	if err != nil {
		t.Fatal(err)
	}
	own, err := f.Provider.Owner(ctx, k.ID)
	if err != nil || own.UID != first.UID || !own.Is(first.Namespace, first.Name) || own.In("team-b") {
		t.Fatalf("Owner after Create: %+v, %v; want %+v", own, err, first)
	}
	second := kms.Owner{Namespace: "team-a", Name: "second", UID: fmt.Sprintf("11111111-0000-4000-8000-%012d", n%1e12)}
	if err := f.Provider.Claim(ctx, k.ID, second, kms.Owner{}); !kms.IsClaimLost(err) {
		t.Errorf("Claim from no owner, while one is recorded: %v, want a ClaimError", err)
	}
	if err := f.Provider.Claim(ctx, k.ID, second, own); err != nil {
		t.Fatalf("Claim from the recorded owner: %v", err)
	}
	if err := f.Provider.Claim(ctx, k.ID, second, own); err != nil {
		t.Errorf("Claim repeated: %v, want success (it is already the owner)", err)
	}
	third := kms.Owner{Namespace: "team-b", Name: "third", UID: fmt.Sprintf("22222222-0000-4000-8000-%012d", n%1e12)}
	if err := f.Provider.Claim(ctx, k.ID, third, own); !kms.IsClaimLost(err) {
		t.Errorf("Claim from a stale owner: %v, want a ClaimError", err)
	}
	if after, err := f.Provider.Owner(ctx, k.ID); err != nil || after.UID != second.UID || !after.Is("team-a", "second") {
		t.Errorf("Owner after the claims: %+v, %v; want %+v", after, err, second)
	}
	// The claimant finds the key by its UID, as it finds a key it made: a claim whose status
	// write was lost is not lost.
	if found, err := f.Provider.Lookup(ctx, second.UID); err != nil || found.ID != k.ID {
		t.Errorf("Lookup by the claimant's UID: %+v, %v; want %s", found, err, k.ID)
	}
}

func observeUnknown(t *testing.T, f Fixture) {
	if _, err := f.Provider.Observe(context.Background(), "00000000-0000-0000-0000-000000000000"); !kms.IsNotFound(err) {
		t.Errorf("Observe(unknown): %v, want NotFoundError", err)
	}
}

func deletionAtDate(t *testing.T, f Fixture) {
	k := create(t, f, "AES_256", kms.OriginKMS)
	doAll(t, f, k.ID, Schedule)
	f.Advance(t, 7*24*time.Hour-time.Hour)
	if got := state(t, f, k.ID); got != kms.StatePendingDeletion {
		t.Fatalf("an hour before the date: %s", got)
	}
	f.Advance(t, 2*time.Hour)
	if got := state(t, f, k.ID); got != kms.StateDeleted {
		t.Fatalf("after the date: %s, want Deleted (or not found)", got)
	}
	for _, c := range []Call{Enable, Cancel} {
		if err := do(f, k.ID, c); err == nil {
			t.Errorf("%s on a deleted key succeeded", c)
		}
	}
}

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

func importer(t *testing.T, f Fixture) kms.Importer {
	t.Helper()
	imp, ok := kms.As[kms.Importer](f.Provider)
	if !ok {
		t.Fatal("the provider does not implement kms.Importer")
	}
	return imp
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

// doAll makes lifecycle calls in order, failing the test on the first error.
func doAll(t *testing.T, f Fixture, id string, calls ...Call) {
	t.Helper()
	for _, c := range calls {
		if err := do(f, id, c); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
	}
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func importFlow(t *testing.T, f Fixture) {
	imp := importer(t, f)
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
	imp := importer(t, f)
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
	imp := importer(t, f)
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
