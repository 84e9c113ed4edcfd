package kmstest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// rotation reads a key's rotation, failing the test when the provider refuses.
func rotation(t *testing.T, r kms.Rotator, id string) kms.Rotation {
	t.Helper()
	rot, err := r.Rotation(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return rot
}

// setRotation sets a key's rotation, failing the test when the provider refuses.
func setRotation(t *testing.T, r kms.Rotator, id string, enabled bool, days int) {
	t.Helper()
	if err := r.SetRotation(context.Background(), id, enabled, days); err != nil {
		t.Fatalf("SetRotation(%v, %d): %v", enabled, days, err)
	}
}

// rotationSettings turns rotation on, changes its interval and turns it off, on both specs
// that rotate: the status reports each setting as asked, asking again for what the key has
// succeeds (the reconciler asks at every look), and nothing rotates before an interval passes.
// An interval outside the limits is refused for good, and the rotation stays as it was.
func rotationSettings(t *testing.T, f Fixture) {
	r := optional[kms.Rotator](t, f)
	for _, spec := range []string{"AES_256", "SM4"} {
		t.Run(spec, func(t *testing.T) {
			k := create(t, f, spec, kms.OriginKMS)
			if got := rotation(t, r, k.ID); got.Enabled || got.Rotations != 0 || !got.LastRotation.IsZero() {
				t.Errorf("a new key's rotation: %+v, want off and never rotated", got)
			}
			for _, step := range []struct {
				enabled bool
				days    int
			}{
				{true, 90}, {true, 90}, {true, 180}, {false, 0}, {false, 0},
				{true, kms.MinRotationDays}, {true, kms.MaxRotationDays},
			} {
				setRotation(t, r, k.ID, step.enabled, step.days)
				got := rotation(t, r, k.ID)
				if got.Enabled != step.enabled || step.enabled && got.IntervalDays != step.days || got.Rotations != 0 {
					t.Errorf("after SetRotation(%v, %d): %+v", step.enabled, step.days, got)
				}
			}
			for _, days := range []int{0, kms.MinRotationDays - 1, kms.MaxRotationDays + 1} {
				if err := r.SetRotation(context.Background(), k.ID, true, days); !kms.IsTerminal(err) {
					t.Errorf("an interval of %d days: %v, want a refusal for good", days, err)
				}
			}
			if got := rotation(t, r, k.ID); !got.Enabled || got.IntervalDays != kms.MaxRotationDays {
				t.Errorf("after the refused intervals: %+v, want on every %d days, as before", got, kms.MaxRotationDays)
			}
		})
	}
}

// rotationAtInterval lets the KMS's time pass: the key rotates once its interval has passed
// since rotation was turned on, the status counts it and dates it, and a key whose rotation is
// turned off rotates no more.
func rotationAtInterval(t *testing.T, f Fixture) {
	r := optional[kms.Rotator](t, f)
	k := create(t, f, "AES_256", kms.OriginKMS)
	interval := time.Duration(kms.MinRotationDays) * 24 * time.Hour
	due := f.Now().Add(interval)
	setRotation(t, r, k.ID, true, kms.MinRotationDays)
	f.Advance(t, interval-time.Hour)
	if got := rotation(t, r, k.ID); got.Rotations != 0 || !got.LastRotation.IsZero() {
		t.Fatalf("an hour before the interval has passed: %+v, want no rotation yet", got)
	}
	f.Advance(t, 2*time.Hour+f.Late)
	got := rotation(t, r, k.ID)
	if !got.Enabled || got.Rotations != 1 {
		t.Fatalf("%v after the interval has passed: %+v, want one rotation", time.Hour+f.Late, got)
	}
	if got.LastRotation.Before(due.Add(-time.Minute)) || got.LastRotation.After(f.Now().Add(time.Minute)) {
		t.Errorf("last rotation at %v, want between %v and %v", got.LastRotation, due, f.Now())
	}
	setRotation(t, r, k.ID, false, 0)
	f.Advance(t, 2*interval)
	if got := rotation(t, r, k.ID); got.Enabled || got.Rotations != 1 {
		t.Errorf("two intervals after rotation was turned off: %+v, want off with one rotation", got)
	}
}

// rotationRefusals checks the keys that cannot rotate, as kms.CanRotate tells them: External
// keys, with or without their material, and key pairs. Turning rotation on is unsupported (a
// spec change helps, a retry does not); turning off the rotation they never had succeeds, so a
// spec that asks for no rotation is met on every key.
func rotationRefusals(t *testing.T, f Fixture) {
	r := optional[kms.Rotator](t, f)
	imp := optional[kms.Importer](t, f)
	ctx := context.Background()
	imported := create(t, f, "AES_256", kms.OriginExternal)
	p := params(t, imp, imported.ID)
	if err := imp.ImportMaterial(ctx, imported.ID, p.ImportToken, Wrap(t, p, random(32)), time.Time{}); err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]string{
		"ExternalPendingImport": create(t, f, "AES_256", kms.OriginExternal).ID,
		"ExternalImported":      imported.ID,
		"RSA_2048":              create(t, f, "RSA_2048", kms.OriginKMS).ID,
		"EC_P256":               create(t, f, "EC_P256", kms.OriginKMS).ID,
	} {
		t.Run(name, func(t *testing.T) {
			if err := r.SetRotation(ctx, id, true, kms.DefaultRotationDays); !kms.IsUnsupported(err) {
				t.Errorf("turning rotation on: %v, want an UnsupportedError", err)
			}
			if err := r.SetRotation(ctx, id, false, 0); err != nil {
				t.Errorf("turning off the rotation it never had: %v", err)
			}
			if got, err := r.Rotation(ctx, id); err == nil && got.Enabled {
				t.Errorf("rotation after the refusal: %+v, want off", got)
			}
		})
	}
}

// rotationThroughDeletion checks rotation in the states that do not rotate. A Disabled key may
// refuse a change (Huawei does) or take it (the embedded KMS does), never half of it. A key
// pending deletion refuses a change with a StateError but is granted what it has, and keeps its
// rotation through a canceled deletion, as Huawei's KMS does.
func rotationThroughDeletion(t *testing.T, f Fixture) {
	r := optional[kms.Rotator](t, f)
	ctx := context.Background()
	k := create(t, f, "AES_256", kms.OriginKMS)
	setRotation(t, r, k.ID, true, 180)
	doAll(t, f, k.ID, Disable)
	var stateErr *kms.StateError
	switch err := r.SetRotation(ctx, k.ID, true, 90); {
	case errors.As(err, &stateErr):
		if got := rotation(t, r, k.ID); !got.Enabled || got.IntervalDays != 180 {
			t.Errorf("a refused change on a Disabled key: %+v, want on every 180 days, as before", got)
		}
	case err != nil:
		t.Errorf("a change on a Disabled key: %v, want success or a StateError", err)
	default:
		if got := rotation(t, r, k.ID); !got.Enabled || got.IntervalDays != 90 {
			t.Errorf("a change taken on a Disabled key: %+v, want on every 90 days", got)
		}
		setRotation(t, r, k.ID, true, 180)
	}
	doAll(t, f, k.ID, Schedule)
	if err := r.SetRotation(ctx, k.ID, false, 0); !errors.As(err, &stateErr) {
		t.Errorf("turning rotation off while pending deletion: %v, want a StateError", err)
	}
	if err := r.SetRotation(ctx, k.ID, true, 180); err != nil {
		t.Errorf("asking a key pending deletion for the rotation it has: %v, want success", err)
	}
	doAll(t, f, k.ID, Cancel)
	if got := rotation(t, r, k.ID); !got.Enabled || got.IntervalDays != 180 {
		t.Errorf("after the deletion was canceled: %+v, want on every 180 days, as before", got)
	}
}

// rotationOfUnknownKey: a key the KMS does not have is not found, as by Observe.
func rotationOfUnknownKey(t *testing.T, f Fixture) {
	r := optional[kms.Rotator](t, f)
	if _, err := r.Rotation(context.Background(), unknownKeyID); !kms.IsNotFound(err) {
		t.Errorf("Rotation(unknown): %v, want NotFoundError", err)
	}
	if err := r.SetRotation(context.Background(), unknownKeyID, true, kms.DefaultRotationDays); !kms.IsNotFound(err) {
		t.Errorf("SetRotation(unknown): %v, want NotFoundError", err)
	}
}
