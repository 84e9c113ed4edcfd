// Package kms is the seam between the reconciler and a key management service: the Provider
// interface every backend implements, the states a key moves through, and the errors a caller
// must tell apart. Providers register themselves by name (see registry.go).
package kms

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// State is a key's lifecycle state as the KMS reports it. The values are the phase names of
// the CustomerMasterKey API.
type State string

// Key states. Which calls each state allows is the lifecycle table in API.md.
const (
	// StateCreating is transient, right after create, before the KMS has made the key usable.
	StateCreating        State = "Creating"
	StateEnabled         State = "Enabled"
	StateDisabled        State = "Disabled"
	StatePendingDeletion State = "PendingDeletion"
	StatePendingImport   State = "PendingImport"
	// StateDeleted is terminal: the material is gone and the key never comes back.
	StateDeleted State = "Deleted"
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
}

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
	// Tags are kept with the key, so that a person looking at the KMS can find its resource.
	Tags map[string]string
}

// Provider is a key management service. Every call is idempotent: asking for the state a key
// is already in succeeds without doing anything. Calls that a key's state does not allow fail
// with a *StateError; a missing key fails with a *NotFoundError.
type Provider interface {
	// Observe reports the key with this ID. A key the KMS deleted may be reported as
	// StateDeleted or as not found; callers treat both as deleted.
	Observe(ctx context.Context, keyID string) (Key, error)
	// Lookup reports the key a Create with this token made, also one whose answer never
	// reached the caller (a crash, a lost write); a *NotFoundError when no Create with this
	// token made a key. It is how the operator tells "no key yet" from "a key it lost track of".
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
	return errors.As(err, &u) || errors.As(err, &r)
}

// IsUnsupported reports whether err says the provider cannot serve the request.
func IsUnsupported(err error) bool {
	var u *UnsupportedError
	return errors.As(err, &u)
}
