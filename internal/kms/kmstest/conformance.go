// Package kmstest is the conformance suite every KMS provider passes: the lifecycle of
// docs/lifecycle.md call by Call, cancel outcomes, idempotency, deletion at the date, import and
// material expiry, rotation, tags and provenance. A provider's tests call Run with a fixture
// that builds a fresh provider and can move the KMS's time forward.
package kmstest

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Fixture is one provider under test.
type Fixture struct {
	Provider kms.Provider
	// Now is the KMS's current time.
	Now func() time.Time
	// Late is how long after its time the KMS may act on something that came due (expired
	// material, a rotation): zero for one that acts at once; Huawei removes expired material
	// "within 24 h".
	Late time.Duration
	// Advance moves the KMS's time forward by d and lets it act on whatever came due
	// (deletion dates, material expiry, rotations) before it returns.
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
	t.Run("Provenance", func(t *testing.T) { provenance(t, newFixture(t)) })
	t.Run("DeletionAtDate", func(t *testing.T) { deletionAtDate(t, newFixture(t)) })
	t.Run("Import", func(t *testing.T) { importFlow(t, newFixture(t)) })
	t.Run("ImportRefusals", func(t *testing.T) { importRefusals(t, newFixture(t)) })
	t.Run("MaterialExpiry", func(t *testing.T) { materialExpiry(t, newFixture(t)) })
	t.Run("Rotation", func(t *testing.T) { rotationSettings(t, newFixture(t)) })
	t.Run("RotationAtInterval", func(t *testing.T) { rotationAtInterval(t, newFixture(t)) })
	t.Run("RotationRefusals", func(t *testing.T) { rotationRefusals(t, newFixture(t)) })
	t.Run("RotationThroughDeletion", func(t *testing.T) { rotationThroughDeletion(t, newFixture(t)) })
	t.Run("RotationOfUnknownKey", func(t *testing.T) { rotationOfUnknownKey(t, newFixture(t)) })
	t.Run("Tags", func(t *testing.T) { userTags(t, newFixture(t)) })
	t.Run("TagsAndClaims", func(t *testing.T) { tagsAndClaims(t, newFixture(t)) })
	t.Run("TagsInOtherStates", func(t *testing.T) { tagsInOtherStates(t, newFixture(t)) })
	t.Run("TagsOfUnknownKey", func(t *testing.T) { tagsOfUnknownKey(t, newFixture(t)) })
}

// unknownKeyID has the form of a key ID, and no KMS under test has made it.
const unknownKeyID = "00000000-0000-0000-0000-000000000000"

// keys numbers the keys the suite makes, for aliases and tokens of their own. Atomic: the
// suites of several providers, or of one provider twice, run in parallel.
var keys atomic.Int64

// create makes a key of this spec and origin: for encryption, or for signing when it is a key
// pair (RSA_*, EC_*).
func create(t *testing.T, f Fixture, spec, origin string) kms.Key {
	t.Helper()
	n := keys.Add(1)
	usage := "ENCRYPT_DECRYPT"
	if strings.HasPrefix(spec, "RSA_") || strings.HasPrefix(spec, "EC_") {
		usage = "SIGN_VERIFY"
	}
	k, err := f.Provider.Create(context.Background(), kms.CreateRequest{
		Alias: fmt.Sprintf("conformance/%s/%d-%d", t.Name(), time.Now().UnixNano(), n), KeySpec: spec,
		KeyUsage: usage, Origin: origin, Token: fmt.Sprintf("token-%d-%d", time.Now().UnixNano(), n),
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

// optional returns the provider as the optional interface T (kms.Importer, kms.Rotator,
// kms.Tagger), looked for as the reconciler does (kms.As), failing the test when it is not one.
func optional[T any](t *testing.T, f Fixture) T {
	t.Helper()
	v, ok := kms.As[T](f.Provider)
	if !ok {
		t.Fatalf("the provider does not implement %s", reflect.TypeFor[T]())
	}
	return v
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
