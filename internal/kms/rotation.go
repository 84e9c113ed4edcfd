package kms

import (
	"context"
	"time"
)

// Rotation is a key's automatic rotation as the KMS reports it.
type Rotation struct {
	Enabled bool
	// IntervalDays is the time between two rotations, in days; zero when the KMS reports none.
	IntervalDays int
	// LastRotation is when the material last rotated; zero before the first rotation.
	LastRotation time.Time
	// Rotations is how many times the material has rotated.
	Rotations int
}

// Rotation limits, as Huawei's KMS has them (30 to 365 days: the SDK's
// UpdateKeyRotationIntervalRequestBody model; default 365: the EnableKeyRotation reference;
// docs/huaweicloud.md) and the CRD checks them.
const (
	MinRotationDays     = 30
	MaxRotationDays     = 365
	DefaultRotationDays = 365
)

// CanRotate reports whether a key of this spec and origin can rotate: only symmetric keys
// whose material the KMS made. Imported material cannot be replaced by the KMS (Huawei refuses
// with KMS.0312), and key pairs are not rotated (KMS.0324).
func CanRotate(keySpec, origin string) bool {
	return origin == OriginKMS && (keySpec == "AES_256" || keySpec == "SM4")
}

// Rotator is implemented by providers that rotate key material on a schedule. A provider
// without it cannot rotate: the reconciler reports spec.rotation as unsupported.
type Rotator interface {
	// Rotation reports the key's automatic rotation.
	Rotation(ctx context.Context, keyID string) (Rotation, error)
	// SetRotation turns automatic rotation on with an interval of intervalDays, or off
	// (intervalDays is then ignored). Asking for what the key already has does nothing.
	SetRotation(ctx context.Context, keyID string, enabled bool, intervalDays int) error
}

// Tagger is implemented by providers that keep user tags on keys, next to the tags that
// record a key's owner, which it never reports nor changes through these calls.
type Tagger interface {
	// Tags reports the key's tags, without the provider's own.
	Tags(ctx context.Context, keyID string) (map[string]string, error)
	// SetTags makes the key's tags, the provider's own aside, exactly tags: it adds, changes
	// and removes as needed.
	SetTags(ctx context.Context, keyID string, tags map[string]string) error
}
