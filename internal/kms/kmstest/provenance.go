package kmstest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// provenance checks what the orphan sweep relies on: a key is made with its provenance, which
// Provenance reports with its owner; SetPolicy changes the policy and nothing else, and does
// nothing to a key without one; MadeIn lists a cluster's keys, with token, owner and
// provenance, and no other cluster's, nor a key made without one; a claim changes the owner,
// never the provenance; user tags do not touch it.
func provenance(t *testing.T, f Fixture) {
	rec, ok := kms.As[kms.Recorder](f.Provider)
	if !ok {
		t.Fatal("the provider records no provenance")
	}
	ctx := context.Background()
	n := time.Now().UnixNano()
	cluster, other := fmt.Sprintf("1a2b3c4d-0000-4000-8000-%012d", n%1e12), fmt.Sprintf("5e6f7a8b-0000-4000-8000-%012d", n%1e12)
	owner := kms.Owner{Namespace: "team-a", Name: "orders", UID: fmt.Sprintf("uid-provenance-%d", n)}
	want := kms.Provenance{Cluster: cluster, Install: "0123456789abcdef", DeletionPolicy: kms.PolicyDelete, PendingDays: 7}
	made := func(o kms.Owner, p kms.Provenance) kms.Key {
		k, err := f.Provider.Create(ctx, kms.CreateRequest{Alias: fmt.Sprintf("conformance/%s/%s", t.Name(), o.UID), KeySpec: "AES_256",
			KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: o.UID, Owner: o, Provenance: p})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	mine := made(owner, want)
	theirs := made(kms.Owner{Namespace: "team-a", Name: "orders", UID: owner.UID + "-other"}, kms.Provenance{Cluster: other, Install: "fedcba9876543210", DeletionPolicy: kms.PolicyDelete, PendingDays: 7})
	unrecorded := made(kms.Owner{Namespace: "team-a", Name: "legacy", UID: owner.UID + "-legacy"}, kms.Provenance{})

	read := func(id string) (kms.Owner, kms.Provenance) {
		t.Helper()
		o, p, err := rec.Provenance(ctx, id)
		if err != nil {
			t.Fatalf("Provenance(%s): %v", id, err)
		}
		return o, p
	}
	if o, p := read(mine.ID); p != want || o.UID != owner.UID || !o.Is(owner.Namespace, owner.Name) {
		t.Errorf("a new key: owner %+v, provenance %+v; want %+v, %+v", o, p, owner, want)
	}
	if _, p := read(unrecorded.ID); !p.IsZero() {
		t.Errorf("a key made without provenance reports %+v", p)
	}

	retained := want
	retained.DeletionPolicy, retained.PendingDays = kms.PolicyRetain, 30
	if err := rec.SetPolicy(ctx, mine.ID, retained); err != nil {
		t.Fatal(err)
	}
	want = retained
	if _, p := read(mine.ID); p != want {
		t.Errorf("after SetPolicy(Retain, 30): %+v, want %+v", p, want)
	}
	if err := rec.SetPolicy(ctx, mine.ID, retained); err != nil {
		t.Errorf("SetPolicy of the policy recorded: %v", err)
	}
	if err := rec.SetPolicy(ctx, unrecorded.ID, kms.Provenance{Cluster: cluster, Install: "0123456789abcdef", DeletionPolicy: kms.PolicyDelete, PendingDays: 7}); err != nil {
		t.Fatal(err)
	}
	if _, p := read(unrecorded.ID); !p.IsZero() {
		t.Errorf("SetPolicy gave a key without provenance one: %+v", p)
	}

	next := kms.Owner{Namespace: "team-a", Name: "orders-2", UID: owner.UID + "-next"}
	if err := f.Provider.Claim(ctx, mine.ID, next, owner); err != nil {
		t.Fatal(err)
	}
	if tg, ok := kms.As[kms.Tagger](f.Provider); ok {
		if err := tg.SetTags(ctx, mine.ID, map[string]string{"team": "payments"}); err != nil {
			t.Fatal(err)
		}
	}
	if o, p := read(mine.ID); p != want || o.UID != next.UID {
		t.Errorf("after a claim and user tags: owner %+v, provenance %+v; want %s, %+v", o, p, next.UID, want)
	}

	var list []kms.Made
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if list, err = rec.MadeIn(ctx, cluster); err != nil {
			t.Fatal(err)
		}
		if len(list) > 0 || time.Now().After(deadline) {
			break // a tag search may lag a moment behind the tags
		}
	}
	if len(list) != 1 {
		t.Fatalf("MadeIn(%s) lists %d keys, want the one made from it: %+v", cluster, len(list), list)
	}
	got := list[0]
	if got.Key.ID != mine.ID || got.Token != owner.UID || got.Owner.UID != next.UID || got.Provenance != want {
		t.Errorf("MadeIn reports %+v; want key %s, token %s, owner %s, provenance %+v", got, mine.ID, owner.UID, next.UID, want)
	}
	if others, err := rec.MadeIn(ctx, other); err != nil || len(others) > 1 || len(others) == 1 && others[0].Key.ID != theirs.ID {
		t.Errorf("MadeIn(other cluster): %+v, %v; want at most key %s", others, err, theirs.ID)
	}
}
