package kmstest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

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
