package huaweicloud

import (
	"errors"
	"fmt"
	"testing"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/sdkerr"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// TestClassify checks how KMS answers become the seam's errors: what waits, what is terminal,
// what is retried with backoff.
func TestClassify(t *testing.T) {
	t.Parallel()
	kind := func(err error) string {
		var se *kms.StateError
		switch {
		case kms.IsNotFound(err):
			return "not found"
		case errors.As(err, &se):
			return "wait for state"
		case kms.AsImportError(err) != nil:
			return "import: " + string(kms.AsImportError(err).Code)
		case kms.IsTerminal(err):
			return "terminal"
		}
		return "retry"
	}
	cases := []struct {
		status int
		code   string
		want   string
	}{
		{400, "KMS.0205", "not found"}, // Huawei's answer for a key that never was
		{400, "KMS.0207", "not found"}, // and for one it deleted
		{404, "APIGW.0101", "retry"},   // the gateway: a wrong endpoint or project, no word on any key
		{400, "KMS.0105", "retry"},     // "system exception"
		{400, "KMS.2601", "import: ImportTokenInvalid"},
		{400, "KMS.2605", "import: ImportTokenInvalid"},
		{429, "APIGW.0308", "retry"},
		{500, "KMS.0500", "retry"},
		{503, "", "retry"},
		{400, codeWrongImportState, "wait for state"},
		{400, codeTokenOfAnotherKey, "import: ImportTokenInvalid"},
		{400, codeOtherMaterial, "import: MaterialMismatch"},
		{400, codePendingDays, "terminal"},
		{400, codeDefaultKey, "terminal"},
		{400, codeNotExternal, "terminal"},
		{400, "KMS.9999", "terminal"},
	}
	for _, tc := range cases {
		err := classify(&sdkerr.ServiceResponseError{StatusCode: tc.status, ErrorCode: tc.code, ErrorMessage: "m"}, "call", "k1", kms.StateEnabled)
		if got := kind(err); got != tc.want {
			t.Errorf("%d %s: %s (%v), want %s", tc.status, tc.code, got, err, tc.want)
		}
	}
	if got := kind(classify(fmt.Errorf("dial tcp: connection refused"), "call", "k1", "")); got != "retry" {
		t.Errorf("a network error: %s, want retry", got)
	}
}
