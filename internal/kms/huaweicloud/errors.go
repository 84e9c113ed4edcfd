package huaweicloud

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/sdkerr"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// KMS error codes the provider tells apart (KMS-FACTS.md). Everything else is classified by
// HTTP status: 404 not found, 429 and 5xx transient, other 4xx terminal.
const (
	codeDefaultKey        = "KMS.0211" // default keys cannot be disabled or deleted
	codeNotExternal       = "KMS.0309" // import into a key that is not External
	codeWrongImportState  = "KMS.0310" // import while not PendingImport
	codePendingDays       = "KMS.1401" // pending_days out of range
	codeAlreadyPending    = "KMS.1402" // schedule while already PendingDeletion
	codeNotPending        = "KMS.1501" // cancel while not PendingDeletion
	codeTokenOfAnotherKey = "KMS.2603" // import token issued for another key
	codeOtherMaterial     = "KMS.2606" // re-import of different material
	codeAsymmetricDelete  = "KMS.2702" // asymmetric material cannot be deleted
)

// classify turns an SDK error into the seam's errors. call and keyID only shape messages.
func classify(err error, call, keyID string, state kms.State) error {
	var se *sdkerr.ServiceResponseError
	if !errors.As(err, &se) {
		return fmt.Errorf("%s key %s: %w", call, keyID, err)
	}
	msg := fmt.Sprintf("%s key %s: %s %s", call, keyID, se.ErrorCode, se.ErrorMessage)
	switch se.ErrorCode {
	case codeWrongImportState:
		return &kms.StateError{KeyID: keyID, Call: call, State: state}
	case codeTokenOfAnotherKey:
		return &kms.ImportError{Code: kms.ImportTokenInvalid, Reason: "the import token is not for key " + keyID}
	case codeOtherMaterial:
		return &kms.ImportError{Code: kms.ImportMaterialMismatch, Reason: fmt.Sprintf(
			"key %s had other material before; only that same material can be imported again", keyID)}
	case codeNotExternal, codePendingDays, codeDefaultKey, codeAsymmetricDelete:
		return &kms.RejectedError{Reason: msg}
	}
	switch {
	case se.StatusCode == http.StatusNotFound:
		return &kms.NotFoundError{KeyID: keyID}
	case se.StatusCode == http.StatusTooManyRequests || se.StatusCode >= 500:
		return errors.New(msg) // transient: retried with backoff
	case se.StatusCode >= 400:
		return &kms.RejectedError{Reason: msg}
	}
	return errors.New(msg)
}

// errorCode is the KMS error code of err, or "".
func errorCode(err error) string {
	var se *sdkerr.ServiceResponseError
	if errors.As(err, &se) {
		return se.ErrorCode
	}
	return ""
}
