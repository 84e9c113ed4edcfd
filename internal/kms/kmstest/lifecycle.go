package kmstest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// lifecycle checks every call from every state against the lifecycle table of
// docs/lifecycle.md: the state after it, or a StateError when the state does not allow it.
// Asking for the state a key is in succeeds.
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

func observeUnknown(t *testing.T, f Fixture) {
	if _, err := f.Provider.Observe(context.Background(), unknownKeyID); !kms.IsNotFound(err) {
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
