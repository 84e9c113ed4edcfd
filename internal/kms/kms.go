// Package kms is the seam between the reconciler and a key management service: the Provider
// interface every backend implements, the states a key moves through, and the errors a caller
// must tell apart. Providers register themselves by name (see registry.go).
package kms

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// State is a key's lifecycle state as the KMS reports it. The values are the phase names of
// the CustomerMasterKey API.
type State string

// Key states. Which calls each state allows is the lifecycle table in docs/lifecycle.md.
const (
	// StateCreating is transient, right after create, before the KMS has made the key usable.
	StateCreating        State = "Creating"
	StateEnabled         State = "Enabled"
	StateDisabled        State = "Disabled"
	StatePendingDeletion State = "PendingDeletion"
	StatePendingImport   State = "PendingImport"
	// StateDeleted is terminal: the material is gone and the key never comes back.
	StateDeleted State = "Deleted"
	// StateFrozen is a provider's own: providers report a frozen key as a *FrozenError,
	// never as a Key in this state.
	StateFrozen State = "Frozen"
)

// Origins of key material, as in the API.
const (
	OriginKMS      = "KMS"
	OriginExternal = "External"
)

// Key is what a provider reports about one key. It never carries key material.
type Key struct {
	ID          string
	Alias       string
	Description string
	KeySpec     string
	KeyUsage    string
	Origin      string
	State       State
	// DeletionDate is when the KMS deletes the key; zero unless State is PendingDeletion.
	DeletionDate time.Time
	// HasMaterial is false for an External key that never received material, or whose
	// imported material expired.
	HasMaterial bool
	// MaterialExpiresAt is when imported material expires; zero when it does not.
	MaterialExpiresAt time.Time

	// Rotation is the key's automatic rotation (see Rotator); nil when it was not read:
	// Observe does not read it, the reconciler does when the spec or status asks about it.
	Rotation *Rotation
	// Tags are the key's tags, the provider's own aside (see Tagger); nil when they were not
	// read, empty when the key has none. Read, like Rotation, only when asked about.
	Tags map[string]string
}

// Owner is the CustomerMasterKey a key belongs to, recorded in the KMS itself (tags, or the
// embedded key record), so that ownership survives the loss of any status. A provider whose
// tags cannot hold a long namespace or name records a digest of it (see Shorten): compare
// with In and Is, never field by field.
type Owner struct {
	Namespace string
	Name      string
	// UID is the resource's UID: the owner's identity. A resource deleted and created again
	// under the same name has another UID.
	UID string
}

// IsZero reports whether no owner is recorded.
func (o Owner) IsZero() bool { return o.UID == "" }

// In reports whether the owner is a resource of this namespace.
func (o Owner) In(namespace string) bool {
	return o.UID != "" && o.Namespace != "" && (o.Namespace == namespace || o.Namespace == Shorten(namespace, maxShortened))
}

// Is reports whether the owner is the resource of this namespace and name (any UID).
func (o Owner) Is(namespace, name string) bool {
	return o.In(namespace) && (o.Name == name || o.Name == Shorten(name, maxShortened))
}

// Named is the owner's namespace and name in one comparable string, whichever form a provider
// recorded them in: Named(o.Namespace, o.Name) of a recorded owner equals Named(namespace, name)
// of the resource it names (Shorten leaves a value that fits as it is).
func Named(namespace, name string) string {
	return Shorten(namespace, maxShortened) + "/" + Shorten(name, maxShortened)
}

// maxShortened is the longest value Shorten is asked for by a provider: Huawei tag values
// hold at most 43 characters (the SDK's TagItem model; docs/huaweicloud.md).
const maxShortened = 43

// Shorten fits s into n characters: s itself when it fits, else a prefix and a digest of
// the whole, so two long values never shorten to the same string. A provider with short tag
// values stores owners this way; Owner.In and Owner.Is recognise both forms.
func Shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	digest := hex.EncodeToString(sum[:])[:16]
	return s[:n-len(digest)-1] + "." + digest
}

// AttemptWindow is how long after a create attempt began (CreateRequest.Attempted) a key may
// have been made and still be the attempt's: the window closes, so a resource that could not
// create its key for a long while does not take a key a person makes later with the same alias.
// The reconciler dates no attempt later than this after its resource was created.
const AttemptWindow = time.Hour

// CreateRequest describes a key to create.
type CreateRequest struct {
	Alias       string
	Description string
	KeySpec     string
	KeyUsage    string
	Origin      string
	// Token makes Create idempotent: a second Create with the same token returns the key the
	// first one made. The reconciler passes the resource's UID, so a crash between creating a
	// key and recording its ID never makes a second key.
	Token string
	// Owner is recorded with the key, so that the key stays the resource's, and a person
	// looking at the KMS can find the resource.
	Owner Owner
	// Attempted is when the caller first set out to create this key (zero when unknown). A
	// provider whose creates are not idempotent may take a key with this alias that carries no
	// mark of anyone's, made since then, as one an earlier attempt made and could not mark.
	Attempted time.Time
	// Provenance is recorded with the key when the provider is a Recorder (zero: none).
	Provenance Provenance
}

// keyIDPattern is the form of every provider's key IDs, a UUID in lower case: Huawei's API
// reference gives key_id as "^[0-9a-z]{8}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{12}$"
// (Adding or Deleting CMK Tags in Batches, path parameters), and the embedded KMS derives its
// IDs in that form. The CRD holds spec.keyID, which a user types, to the UUID's own form (hex
// digits), as docs/api.md says; what a KMS returns is taken in the reference's wider form.
var keyIDPattern = regexp.MustCompile(`^[0-9a-z]{8}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{12}$`)

// ValidKeyID reports whether id has the form of a key ID. Providers answer NotFound for
// anything else without looking it up, so an ID never names something that is not a key.
func ValidKeyID(id string) bool { return keyIDPattern.MatchString(id) }

// Provider is a key management service. Every call is idempotent: asking for the state a key
// is already in succeeds without doing anything. Calls that a key's state does not allow fail
// with a *StateError; a missing key fails with a *NotFoundError.
type Provider interface {
	// Observe reports the key with this ID. A key the KMS deleted may be reported as
	// StateDeleted or as not found; callers treat both as deleted.
	Observe(ctx context.Context, keyID string) (Key, error)
	// Lookup reports the key a Create with this token made, also one whose answer never
	// reached the caller (a crash, a lost write), else the key claimed for an owner whose UID is
	// this token (the operator's tokens are resource UIDs: an adopted or taken-back key whose
	// status write was lost); a *NotFoundError when there is neither. It is how the operator
	// tells "no key yet" from "a key it lost track of".
	Lookup(ctx context.Context, token string) (Key, error)
	// Create makes a key: Enabled, or PendingImport for an External key.
	Create(ctx context.Context, req CreateRequest) (Key, error)
	// Enable moves a Disabled key to Enabled.
	Enable(ctx context.Context, keyID string) error
	// Disable moves an Enabled key to Disabled.
	Disable(ctx context.Context, keyID string) error
	// ScheduleDeletion moves an Enabled, Disabled or PendingImport key to PendingDeletion; the
	// KMS deletes it after pendingDays.
	ScheduleDeletion(ctx context.Context, keyID string, pendingDays int) error
	// CancelDeletion moves a PendingDeletion key to Disabled, or to PendingImport when it is an
	// External key that never received material.
	CancelDeletion(ctx context.Context, keyID string) error
	// SetDescription changes the key's description.
	SetDescription(ctx context.Context, keyID, description string) error
	// Owner reports the resource the KMS records the key as belonging to: zero when none is
	// recorded (a key made outside the operator and never adopted). It is separate from
	// Observe because a cloud KMS keeps it in tags, one more call, needed only when a resource
	// takes a key, or first acts on one.
	Owner(ctx context.Context, keyID string) (Owner, error)
	// Claim records owner as the key's owner, provided the key's recorded owner is still
	// previous (the zero Owner for none): two resources claiming one key never both succeed.
	// A claim that finds another owner fails with a *ClaimError.
	Claim(ctx context.Context, keyID string, owner, previous Owner) error
}

// ClaimError says a claim lost: the key's recorded owner is no longer the one the claimant
// saw. The caller reads the key again and judges the new owner.
type ClaimError struct{ KeyID string }

func (e *ClaimError) Error() string {
	return fmt.Sprintf("the owner of key %s changed while it was being claimed", e.KeyID)
}

// IsClaimLost reports whether err is a lost claim.
func IsClaimLost(err error) bool {
	var c *ClaimError
	return errors.As(err, &c)
}

// AliasInUseError says Create was refused because another key, not deleted, has the alias.
// KeyID names that key for the caller to judge; the message does not, since it may reach a
// person who has no business knowing it.
type AliasInUseError struct {
	Alias string
	KeyID string
}

func (e *AliasInUseError) Error() string {
	return fmt.Sprintf("alias %q is already used by another key", e.Alias)
}

// AsAliasInUse returns err as an *AliasInUseError, or nil.
func AsAliasInUse(err error) *AliasInUseError {
	var a *AliasInUseError
	if errors.As(err, &a) {
		return a
	}
	return nil
}

// WrappingAlgorithm is the one wrapping algorithm the import seam speaks: RSA-OAEP with SHA-256
// for both the digest and MGF1, under an RSA 2048 public key.
const WrappingAlgorithm = "RSAES_OAEP_SHA_256"

// ImportParameters are what a caller needs to wrap key material for one key.
type ImportParameters struct {
	// PublicKey is the DER SubjectPublicKeyInfo of the RSA 2048 key to wrap the material with.
	PublicKey []byte
	// ImportToken must accompany the wrapped material.
	ImportToken string
	// ExpiresAt is when PublicKey and ImportToken stop being accepted.
	ExpiresAt time.Time
}

// Importer is implemented by providers that take External key material (bring your own key).
type Importer interface {
	// ImportParameters issues a fresh wrapping key and token for a PendingImport External key.
	// Earlier tokens for the key stop being accepted.
	ImportParameters(ctx context.Context, keyID string) (ImportParameters, error)
	// ImportMaterial imports material wrapped under the parameters of importToken into a
	// PendingImport key, which becomes Enabled. expiresAt is zero for material that does not
	// expire. Material the key had before may only come back the same. Refusals of the token
	// or the material are *ImportError.
	ImportMaterial(ctx context.Context, keyID, importToken string, wrappedMaterial []byte, expiresAt time.Time) error
}

// ImportErrorCode says why the KMS refused imported material.
type ImportErrorCode string

// Import refusals. Each is fixed by the user, not by retrying the same call.
const (
	// ImportTokenInvalid: the token expired, was superseded by newer parameters, or belongs to
	// another key. Wrap the material again with fresh parameters.
	ImportTokenInvalid ImportErrorCode = "ImportTokenInvalid"
	// ImportMaterialInvalid: the material does not unwrap with the token's wrapping key, or is
	// not the right length for the key spec.
	ImportMaterialInvalid ImportErrorCode = "MaterialInvalid"
	// ImportMaterialMismatch: the key had other material before; only the same may be imported.
	ImportMaterialMismatch ImportErrorCode = "MaterialMismatch"
)

// ImportError is a refusal of imported material. Its reason never contains material.
type ImportError struct {
	Code   ImportErrorCode
	Reason string
}

func (e *ImportError) Error() string { return e.Reason }

// AsImportError returns err as an *ImportError, or nil.
func AsImportError(err error) *ImportError {
	var ie *ImportError
	if errors.As(err, &ie) {
		return ie
	}
	return nil
}

// Notifier is implemented by providers that change keys on their own (an embedded KMS deleting
// keys at their deletion date), so the operator can report the change at once.
type Notifier interface {
	// Changes delivers the IDs of keys the provider changed by itself.
	Changes() <-chan string
}

// NotFoundError says the KMS has no key with this ID, or (from Lookup) none made with this
// creation token.
type NotFoundError struct{ KeyID, Token string }

func (e *NotFoundError) Error() string {
	if e.KeyID == "" {
		return fmt.Sprintf("no key was made with creation token %s", e.Token)
	}
	return fmt.Sprintf("key %s not found", e.KeyID)
}

// StateError says a call is not allowed from the key's current state. Callers wait for the
// state to change rather than retry.
type StateError struct {
	KeyID string
	Call  string
	State State
}

func (e *StateError) Error() string {
	return fmt.Sprintf("cannot %s key %s while it is %s", e.Call, e.KeyID, e.State)
}

// UnsupportedError says the provider cannot serve the request at all (a key spec it does not
// implement, for example). Retrying does not help; a spec change might.
type UnsupportedError struct{ Reason string }

func (e *UnsupportedError) Error() string { return e.Reason }

// RejectedError says the KMS refused a request for good (an alias already in use, for
// example). Retrying does not help; a spec change might.
type RejectedError struct{ Reason string }

func (e *RejectedError) Error() string { return e.Reason }

// UnreadableError says the KMS holds a record of the key that it cannot read (a damaged
// record). Retrying does not help: a person must restore the record, or give the key up.
type UnreadableError struct {
	KeyID  string
	Reason string
}

func (e *UnreadableError) Error() string {
	return fmt.Sprintf("the KMS's record of key %s cannot be read: %s", e.KeyID, e.Reason)
}

// UnavailableError says the KMS refuses the operator as a whole for now (its credentials, for
// example): no key can be reached, and retrying one key sooner does not help. RetryAfter is
// when to try again.
type UnavailableError struct {
	Reason     string
	RetryAfter time.Duration
}

func (e *UnavailableError) Error() string { return e.Reason }

// AsUnavailable returns err as an *UnavailableError, or nil.
func AsUnavailable(err error) *UnavailableError {
	var u *UnavailableError
	if errors.As(err, &u) {
		return u
	}
	return nil
}

// FrozenError says the KMS holds the key but lets nothing be done to it, or read about it,
// for now (Huawei: key_state 7, the account in arrears). Retrying soon does not help; the key
// is looked at again later and left alone until it thaws.
type FrozenError struct{ KeyID string }

func (e *FrozenError) Error() string {
	return fmt.Sprintf("key %s is frozen in the KMS (the cloud account is in arrears, for example): nothing can be done to it until it thaws", e.KeyID)
}

// IsFrozen reports whether err says the key is frozen.
func IsFrozen(err error) bool {
	var f *FrozenError
	return errors.As(err, &f)
}

// IsUnreadable reports whether err says the key's record cannot be read.
func IsUnreadable(err error) bool {
	var u *UnreadableError
	return errors.As(err, &u)
}

// IsNotFound reports whether err says the key does not exist.
func IsNotFound(err error) bool {
	var nf *NotFoundError
	return errors.As(err, &nf)
}

// IsTerminal reports whether err is one that retrying cannot fix.
func IsTerminal(err error) bool {
	var u *UnsupportedError
	var r *RejectedError
	return errors.As(err, &u) || errors.As(err, &r) || AsAliasInUse(err) != nil
}

// IsUnsupported reports whether err says the provider cannot serve the request.
func IsUnsupported(err error) bool {
	var u *UnsupportedError
	return errors.As(err, &u)
}
