package huaweicloud

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/sdkerr"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// KMS error codes the provider tells apart (Huawei's error-code table; docs/huaweicloud.md).
// Everything else is classified by HTTP status: 429 and 5xx transient, other 4xx terminal. A
// missing key is only ever told by its KMS codes: Huawei answers it with HTTP 400, and a 404
// comes from the API gateway (APIGW.0101: a wrong endpoint or project), which says nothing
// about any key.
const (
	codeInvalidKeyID      = "KMS.0205" // no key with this ID (never was)
	codeKeyNotFound       = "KMS.0207" // the key does not exist (deleted)
	codeSystemException   = "KMS.0105" // a 400 to retry
	codeInvalidToken      = "KMS.2601" // import token invalid or expired
	codeTokenVerification = "KMS.2605" // import token verification failed
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
	if u := kms.AsUnavailable(err); u != nil {
		return u // the breaker refused the call before it was sent
	}
	var se *sdkerr.ServiceResponseError
	if !errors.As(err, &se) {
		return fmt.Errorf("%s key %s: %w", call, keyID, err)
	}
	msg := fmt.Sprintf("%s key %s: %s %s", call, keyID, se.ErrorCode, se.ErrorMessage)
	switch se.ErrorCode {
	case codeInvalidKeyID, codeKeyNotFound:
		return &kms.NotFoundError{KeyID: keyID}
	case codeSystemException:
		return errors.New(msg) // transient: retried with backoff
	case codeWrongImportState:
		return &kms.StateError{KeyID: keyID, Call: call, State: state}
	case codeTokenOfAnotherKey, codeInvalidToken, codeTokenVerification:
		// All three mean: wrap the material again with fresh parameters.
		return &kms.ImportError{Code: kms.ImportTokenInvalid, Reason: fmt.Sprintf(
			"the KMS does not accept the import token for key %s (%s): it expired, was superseded, or is another key's", keyID, se.ErrorCode)}
	case codeOtherMaterial:
		return &kms.ImportError{Code: kms.ImportMaterialMismatch, Reason: fmt.Sprintf(
			"key %s had other material before; only that same material can be imported again", keyID)}
	case codeNotExternal, codePendingDays, codeDefaultKey, codeAsymmetricDelete:
		return &kms.RejectedError{Reason: msg}
	}
	switch {
	case se.StatusCode == http.StatusUnauthorized,
		(se.StatusCode == http.StatusForbidden || se.StatusCode == http.StatusNotFound) && strings.HasPrefix(se.ErrorCode, "APIGW."):
		// The gateway's, about the account (credentials, endpoint, project), never about a
		// key: the breaker has opened, and every call waits (see breaker).
		return &kms.UnavailableError{RetryAfter: DefaultAuthBackoff, Reason: refusal(se.StatusCode)}
	case se.StatusCode == http.StatusForbidden:
		return &kms.RejectedError{Reason: fmt.Sprintf("%s: the operator's IAM user may not do this; grant it the KMS actions docs/huaweicloud.md lists", msg)}
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
