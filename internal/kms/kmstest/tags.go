package kmstest

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// setTags makes a key's tags exactly want and reads them back: Tags must report what was set.
func setTags(t *testing.T, tg kms.Tagger, id string, want map[string]string) {
	t.Helper()
	if err := tg.SetTags(context.Background(), id, want); err != nil {
		t.Fatalf("SetTags(%v): %v", want, err)
	}
	got, err := tg.Tags(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("tags %v after SetTags(%v)", got, want)
	}
}

// createOwned makes a key recorded as owner's, its creation token the owner's UID, as the
// reconciler makes every key.
func createOwned(t *testing.T, f Fixture, owner kms.Owner) kms.Key {
	t.Helper()
	k, err := f.Provider.Create(context.Background(), kms.CreateRequest{Alias: fmt.Sprintf("conformance/%s/%d", t.Name(), time.Now().UnixNano()),
		KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: owner.UID, Owner: owner})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ownedBy checks the key's recorded owner is still owner.
func ownedBy(t *testing.T, f Fixture, id string, owner kms.Owner) {
	t.Helper()
	if got, err := f.Provider.Owner(context.Background(), id); err != nil || got.UID != owner.UID || !got.Is(owner.Namespace, owner.Name) {
		t.Errorf("owner %+v, %v; want %+v", got, err, owner)
	}
}

// userTags sets, changes and removes user tags on a key with an owner. Tags reports exactly
// what was set, never the provider's own tags (the owner's, the creation token's); setting the
// tags the key has succeeds; and the owner stays recorded, the key still found by its token.
func userTags(t *testing.T, f Fixture) {
	tg := optional[kms.Tagger](t, f)
	n := time.Now().UnixNano()
	owner := kms.Owner{Namespace: "team-a", Name: "tagged", UID: fmt.Sprintf("33333333-0000-4000-8000-%012d", n%1e12)}
	k := createOwned(t, f, owner)
	if got, err := tg.Tags(context.Background(), k.ID); err != nil || len(got) != 0 {
		t.Fatalf("a new key's tags: %v, %v; want none (the owner's are the provider's own)", got, err)
	}
	longest := map[string]string{strings.Repeat("k", 36): strings.Repeat("v", 43)} // the CRD's limits
	for _, want := range []map[string]string{
		{"team": "payments", "env": "prod"},
		{"team": "payments", "env": "prod"},   // again: nothing to change
		{"team": "risk", "cost-center": "42"}, // one changed, one removed, one added
		{"team": "", "cost-center": "42"},     // an empty value is a value
		longest,
		{},
		nil,
	} {
		setTags(t, tg, k.ID, want)
		ownedBy(t, f, k.ID, owner)
	}
	if found, err := f.Provider.Lookup(context.Background(), owner.UID); err != nil || found.ID != k.ID {
		t.Errorf("Lookup by the creation token after the tags changed: %+v, %v; want %s", found, err, k.ID)
	}
}

// tagsAndClaims: a claim changes the owner and leaves the user tags, and user tags set after
// it leave the new owner.
func tagsAndClaims(t *testing.T, f Fixture) {
	tg := optional[kms.Tagger](t, f)
	n := time.Now().UnixNano()
	first := kms.Owner{Namespace: "team-a", Name: "first", UID: fmt.Sprintf("44444444-0000-4000-8000-%012d", n%1e12)}
	second := kms.Owner{Namespace: "team-a", Name: "second", UID: fmt.Sprintf("55555555-0000-4000-8000-%012d", n%1e12)}
	k := createOwned(t, f, first)
	tags := map[string]string{"team": "payments"}
	setTags(t, tg, k.ID, tags)
	if err := f.Provider.Claim(context.Background(), k.ID, second, first); err != nil {
		t.Fatalf("Claim from the recorded owner: %v", err)
	}
	if got, err := tg.Tags(context.Background(), k.ID); err != nil || !maps.Equal(got, tags) {
		t.Errorf("tags after the claim: %v, %v; want %v", got, err, tags)
	}
	setTags(t, tg, k.ID, map[string]string{"team": "risk"})
	ownedBy(t, f, k.ID, second)
}

// tagsInOtherStates: a Disabled key and an External key waiting for its material are tagged
// as any, and the tags change nothing of their state.
func tagsInOtherStates(t *testing.T, f Fixture) {
	tg := optional[kms.Tagger](t, f)
	disabled := create(t, f, "AES_256", kms.OriginKMS)
	doAll(t, f, disabled.ID, Disable)
	for want, id := range map[kms.State]string{
		kms.StateDisabled:      disabled.ID,
		kms.StatePendingImport: create(t, f, "AES_256", kms.OriginExternal).ID,
	} {
		setTags(t, tg, id, map[string]string{"state": strings.ToLower(string(want))})
		if got := state(t, f, id); got != want {
			t.Errorf("a %s key after SetTags: %s", want, got)
		}
	}
}

// tagsOfUnknownKey: a key the KMS does not have is not found, as by Observe.
func tagsOfUnknownKey(t *testing.T, f Fixture) {
	tg := optional[kms.Tagger](t, f)
	if _, err := tg.Tags(context.Background(), unknownKeyID); !kms.IsNotFound(err) {
		t.Errorf("Tags(unknown): %v, want NotFoundError", err)
	}
	if err := tg.SetTags(context.Background(), unknownKeyID, map[string]string{"team": "a"}); !kms.IsNotFound(err) {
		t.Errorf("SetTags(unknown): %v, want NotFoundError", err)
	}
}
