package keystatus

import (
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Blocked is a failure only a person can fix, with the reason and what to do: a key the
// resource may not have, an alias it may not take, a spec the key does not match, key
// material that cannot be imported. Nothing is done to any key because of it.
type Blocked struct {
	Reason, Message string
	// Import marks a refused import: the Secret it reads is not watched, so it is tried
	// again at the import retry rather than the slow resync.
	Import bool
	// Hold marks a guard rail the operator keeps on purpose (deletion protection), not a
	// call that failed.
	Hold bool
}

func (b *Blocked) Error() string { return b.Message }

// Kind is how a failure is handled.
type Kind int

const (
	// Transient failures are returned to the controller, which retries them with backoff.
	Transient Kind = iota
	// Blocking failures wait for a person: reported, looked at again later, never hot-looped.
	Blocking
	// Conflict means another writer won a race; the next attempt starts from what it wrote.
	Conflict
	// Unavailable means the KMS refuses the operator as a whole; every key waits for it.
	Unavailable
)

// Failure is a classified error: what stopped a reconcile short of the spec.
type Failure struct {
	Kind    Kind
	Reason  string
	Message string
	// Import: a refused import (see Blocked.Import).
	Import bool
	// Hold: a guard rail kept on purpose (see Blocked.Hold).
	Hold bool
	// RetryAfter is when an unavailable KMS may take calls again.
	RetryAfter time.Duration
	// Doing is what was being done, in the words of a retried failure's message.
	Doing string
	// Err is the error met.
	Err error
}

// Classify is the one classification of errors, for a reconcile and a deletion alike. doing
// says what was being done, for the message of a failure that is retried.
func Classify(err error, doing string) *Failure {
	var blocked *Blocked
	switch {
	case errors.As(err, &blocked):
		return &Failure{Kind: Blocking, Reason: blocked.Reason, Message: blocked.Message, Import: blocked.Import, Hold: blocked.Hold, Err: err}
	case kms.IsTerminal(err), kms.IsUnreadable(err), kms.IsFrozen(err):
		return &Failure{Kind: Blocking, Reason: terminalReason(err), Message: err.Error(), Err: err}
	case apierrors.IsConflict(err):
		return &Failure{Kind: Conflict, Err: err}
	case kms.AsUnavailable(err) != nil:
		u := kms.AsUnavailable(err)
		return &Failure{Kind: Unavailable, Reason: v1alpha1.ReasonKMSUnavailable, Message: u.Reason, RetryAfter: u.RetryAfter, Err: err}
	}
	// A lost claim (another resource took the key first, or a KMS whose tags did not keep
	// this claim) is retried with backoff like any failure, and shown: the next attempt judges
	// the new owner.
	return &Failure{Kind: Transient, Reason: v1alpha1.ReasonReconcileError,
		Message: fmt.Sprintf("%s key failed, retrying with backoff: %v", doing, err), Doing: doing, Err: err}
}

// terminalReason is the condition reason of a failure retrying cannot fix.
func terminalReason(err error) string {
	switch {
	case kms.IsUnsupported(err):
		return v1alpha1.ReasonUnsupported
	case kms.IsUnreadable(err):
		return v1alpha1.ReasonKeyUnreadable
	case kms.IsFrozen(err):
		return v1alpha1.ReasonKeyFrozen
	}
	return v1alpha1.ReasonRejected
}

// WarningReason is the event reason of a failure reported with this condition reason.
func WarningReason(conditionReason string) string {
	switch conditionReason {
	case v1alpha1.ReasonReconcileError:
		return v1alpha1.EventFailed
	case v1alpha1.ReasonSecretNotFound, v1alpha1.ReasonImportTokenInvalid,
		v1alpha1.ReasonMaterialInvalid, v1alpha1.ReasonMaterialMismatch, v1alpha1.ReasonExpiryPassed:
		return v1alpha1.EventImportFailed
	}
	return conditionReason
}
