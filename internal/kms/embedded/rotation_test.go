package embedded

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
)

// TestRotationAtInterval turns rotation on with a fake clock and lets the reaper rotate the key
// at its interval: the material changes, data encrypted under every earlier version still
// decrypts, and the count and time of rotations are reported.
func TestRotationAtInterval(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	k := f.create(t, "AES_256", kms.OriginKMS)
	before, err := f.p.Encrypt(ctx, k.ID, []byte("written before any rotation"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.p.SetRotation(ctx, k.ID, true, 30); err != nil {
		t.Fatal(err)
	}
	start := f.clock.Now()

	reaper, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = f.p.Start(reaper); close(done) }()
	defer func() { stop(); <-done }()

	waitForWaiters(t, f.clock)
	f.clock.Step(30*24*time.Hour - time.Minute)
	waitForWaiters(t, f.clock)
	if rot := f.rotation(t, k.ID); rot.Rotations != 0 {
		t.Fatalf("a minute before the interval: %d rotations, want 0", rot.Rotations)
	}
	material := f.secret(t, k.ID).Data[materialField]

	f.clock.Step(2 * time.Minute)
	f.waitRotations(t, k.ID, 1)
	if bytes.Equal(f.secret(t, k.ID).Data[materialField], material) {
		t.Error("the key rotated but its material is the same")
	}
	rot := f.rotation(t, k.ID)
	if want := start.Add(30*24*time.Hour + time.Minute).Truncate(time.Second); !rot.LastRotation.Equal(want) {
		t.Errorf("last rotation %s, want %s", rot.LastRotation, want)
	}
	between, err := f.p.Encrypt(ctx, k.ID, []byte("written after the first rotation"))
	if err != nil {
		t.Fatal(err)
	}

	// The next rotation is an interval after the last one, not after rotation was turned on.
	waitForWaiters(t, f.clock)
	f.clock.Step(30 * 24 * time.Hour)
	f.waitRotations(t, k.ID, 2)

	for want, ciphertext := range map[string][]byte{"written before any rotation": before, "written after the first rotation": between} {
		got, err := f.p.Decrypt(ctx, k.ID, ciphertext)
		if err != nil || string(got) != want {
			t.Errorf("decrypting data from before a rotation: %q, %v; want %q", got, err, want)
		}
	}
	if len(f.secret(t, k.ID).Data) < 3 {
		t.Errorf("Secret holds %d fields, want the record and three material versions", len(f.secret(t, k.ID).Data))
	}

	// Turned off, the key rotates no more.
	if err := f.p.SetRotation(ctx, k.ID, false, 0); err != nil {
		t.Fatal(err)
	}
	waitForWaiters(t, f.clock)
	f.clock.Step(100 * 24 * time.Hour)
	waitForWaiters(t, f.clock)
	if rot := f.rotation(t, k.ID); rot.Enabled || rot.Rotations != 2 {
		t.Errorf("after rotation was turned off: %+v, want disabled with 2 rotations", rot)
	}
}

// TestDeletedKeyLosesEveryMaterialVersion: at the deletion date no version of the material
// stays behind.
func TestDeletedKeyLosesEveryMaterialVersion(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	k := f.create(t, "AES_256", kms.OriginKMS)
	if err := f.p.SetRotation(ctx, k.ID, true, 30); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(31 * 24 * time.Hour)
	if _, err := f.p.ReapDue(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.rotation(t, k.ID).Rotations; n != 1 {
		t.Fatalf("%d rotations, want 1", n)
	}
	for _, c := range []kmstest.Call{kmstest.Disable, kmstest.Schedule} {
		if err := f.do(k.ID, c); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.Step(8 * 24 * time.Hour)
	if _, err := f.p.ReapDue(ctx); err != nil {
		t.Fatal(err)
	}
	for field := range f.secret(t, k.ID).Data {
		if strings.HasPrefix(field, "material") {
			t.Errorf("deleted key still holds %s", field)
		}
	}
}

func TestRotationRules(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	external := f.create(t, "AES_256", kms.OriginExternal)
	pair := f.create(t, "RSA_2048", kms.OriginKMS)
	sm4 := f.create(t, "SM4", kms.OriginKMS)
	for name, id := range map[string]string{"External": external.ID, "RSA_2048": pair.ID} {
		if err := f.p.SetRotation(ctx, id, true, 365); !kms.IsUnsupported(err) {
			t.Errorf("%s key: turning rotation on gave %v, want unsupported", name, err)
		}
		if err := f.p.SetRotation(ctx, id, false, 0); err != nil {
			t.Errorf("%s key: turning rotation off, which it never had: %v", name, err)
		}
	}
	if err := f.p.SetRotation(ctx, sm4.ID, true, 29); !kms.IsTerminal(err) {
		t.Errorf("interval of 29 days: %v, want a refusal", err)
	}

	// Asking for what the key has writes nothing; a new interval is one write.
	if err := f.p.SetRotation(ctx, sm4.ID, true, 90); err != nil {
		t.Fatal(err)
	}
	f.writes.n.Store(0)
	if err := f.p.SetRotation(ctx, sm4.ID, true, 90); err != nil {
		t.Fatal(err)
	}
	if n := f.writes.n.Load(); n != 0 {
		t.Errorf("asking for the rotation the key has: %d writes, want 0", n)
	}
	if err := f.p.SetRotation(ctx, sm4.ID, true, 180); err != nil {
		t.Fatal(err)
	}
	if rot := f.rotation(t, sm4.ID); !rot.Enabled || rot.IntervalDays != 180 {
		t.Errorf("after a new interval: %+v", rot)
	}

	// Rotation survives a deletion scheduled and canceled, and cannot change meanwhile.
	for _, c := range []kmstest.Call{kmstest.Disable, kmstest.Schedule} {
		if err := f.do(sm4.ID, c); err != nil {
			t.Fatal(err)
		}
	}
	var stateErr *kms.StateError
	if err := f.p.SetRotation(ctx, sm4.ID, false, 0); !errors.As(err, &stateErr) {
		t.Errorf("turning rotation off while pending deletion: %v, want a state error", err)
	}
	if err := f.do(sm4.ID, kmstest.Cancel); err != nil {
		t.Fatal(err)
	}
	if rot := f.rotation(t, sm4.ID); !rot.Enabled || rot.IntervalDays != 180 {
		t.Errorf("after the deletion was canceled: %+v, want rotation as it was", rot)
	}
}

func TestTags(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	k := f.create(t, "AES_256", kms.OriginKMS)
	owner := kms.Owner{Namespace: "team-a", Name: "app", UID: "uid-1"}
	if err := f.p.Claim(ctx, k.ID, owner, kms.Owner{}); err != nil {
		t.Fatal(err)
	}
	for _, tags := range []map[string]string{
		{"team": "a", "env": "prod"},
		{"team": "b", "cost-center": "42"}, // changed, removed, added
		{},
	} {
		if err := f.p.SetTags(ctx, k.ID, tags); err != nil {
			t.Fatal(err)
		}
		got, err := f.p.Tags(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, tags) {
			t.Errorf("tags %v, want %v", got, tags)
		}
		if o, err := f.p.Owner(ctx, k.ID); err != nil || o != owner {
			t.Errorf("owner after setting tags: %+v, %v; want %+v", o, err, owner)
		}
	}
	f.writes.n.Store(0)
	if err := f.p.SetTags(ctx, k.ID, nil); err != nil {
		t.Fatal(err)
	}
	if n := f.writes.n.Load(); n != 0 {
		t.Errorf("setting the tags the key has: %d writes, want 0", n)
	}
}

func TestEncryptNeedsAnEnabledKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	k := f.create(t, "AES_256", kms.OriginKMS)
	other := f.create(t, "AES_256", kms.OriginKMS)
	ciphertext, err := f.p.Encrypt(ctx, k.ID, []byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Decrypt(ctx, other.ID, ciphertext); err == nil {
		t.Error("another key decrypted the ciphertext")
	}
	if err := f.do(k.ID, kmstest.Disable); err != nil {
		t.Fatal(err)
	}
	var stateErr *kms.StateError
	if _, err := f.p.Decrypt(ctx, k.ID, ciphertext); !errors.As(err, &stateErr) {
		t.Errorf("decrypting with a disabled key: %v, want a state error", err)
	}
}

func (f *fixture) rotation(t *testing.T, id string) kms.Rotation {
	t.Helper()
	rot, err := f.p.Rotation(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return rot
}

func (f *fixture) waitRotations(t *testing.T, id string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.rotation(t, id).Rotations < n {
		if time.Now().After(deadline) {
			t.Fatalf("key %s never rotated %d times: %+v", id, n, f.rotation(t, id))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
