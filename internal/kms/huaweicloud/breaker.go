package huaweicloud

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// DefaultAuthBackoff is how long every call waits after the KMS refuses the credentials,
// doubling at each refusal up to maxAuthBackoff.
const (
	DefaultAuthBackoff = 10 * time.Second
	maxAuthBackoff     = 5 * time.Minute
)

// breaker stops every call once the API gateway refuses the credentials (HTTP 401, or an
// APIGW code with 403: APIGW.0301, a wrong or rotated key) or does not know the operation (an
// APIGW code with 404: APIGW.0101, a wrong endpoint or project). A 403 or 404 from the KMS
// itself (a KMS code: an IAM policy denying one action, say) is about that call and goes to its
// caller. The gateway's refusal is about the account, not a key: retried
// per key, thousands of keys would keep failing, and Huawei locks an access key for 5 minutes
// after 5 authentication failures in a row (the API Gateway FAQ on IAM authentication errors;
// docs/huaweicloud.md), so a fixed key would stay locked.
// Until the credentials are known to work (at start, and after a refusal once the backoff has
// passed), one call at a time goes through as a probe while the others wait for its answer;
// while refused, calls fail at once without being sent, and the backoff doubles at each
// refusal.
type breaker struct {
	next    http.RoundTripper
	initial time.Duration
	now     func() time.Time

	mu       sync.Mutex
	verified bool          // an answer other than 401/403 came since the last refusal
	probe    chan struct{} // closed when the call in flight as a probe is answered
	backoff  time.Duration
	until    time.Time
	reason   string // why calls are refused; empty when they are not
}

func (b *breaker) RoundTrip(req *http.Request) (*http.Response, error) {
	probing, err := b.admit(req.Context())
	if err != nil {
		return nil, err
	}
	resp, err := b.next.RoundTrip(req)
	refused := err == nil && gatewayRefusal(resp)
	b.record(probing, err == nil, refused, resp)
	return resp, err
}

// gatewayRefusal reports whether the answer is the API gateway refusing the account: any 401,
// or a 403 or 404 whose error code is the gateway's (APIGW.*). The body is read to tell, and
// put back for the SDK.
func gatewayRefusal(resp *http.Response) bool {
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return true
	case http.StatusForbidden, http.StatusNotFound:
	default:
		return false
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return false
	}
	var answer struct {
		Code  string `json:"error_code"`
		Error struct {
			Code string `json:"error_code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &answer)
	return strings.HasPrefix(answer.Code, "APIGW.") || strings.HasPrefix(answer.Error.Code, "APIGW.")
}

// admit lets a call through, as a probe when the credentials are not known to work, waits
// while another call probes them, or refuses it while they are known not to work.
func (b *breaker) admit(ctx context.Context) (probing bool, err error) {
	for {
		b.mu.Lock()
		switch now := b.now(); {
		case b.verified:
			b.mu.Unlock()
			return false, nil
		case b.probe != nil:
			wait := b.probe
			b.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return false, ctx.Err()
			}
		case b.reason != "" && now.Before(b.until):
			err := b.unavailable(now)
			b.mu.Unlock()
			return false, err
		default:
			b.probe = make(chan struct{})
			b.mu.Unlock()
			return true, nil
		}
	}
}

// record judges an answer. While the breaker is open only the probe's answer counts: answers
// to calls sent before it opened neither close it nor double its backoff, so one rotation
// seen by many calls in flight is one refusal.
func (b *breaker) record(probing, answered, refused bool, resp *http.Response) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case !answered, !probing && b.reason != "":
		// No answer says nothing about the account; an old call's answer is not the probe's.
	case refused:
		b.verified = false
		b.backoff = min(max(2*b.backoff, b.initial), maxAuthBackoff)
		b.until = b.now().Add(b.backoff)
		b.reason = refusal(resp.StatusCode)
	default:
		b.verified, b.backoff, b.reason = true, 0, ""
	}
	if probing {
		close(b.probe)
		b.probe = nil
	}
}

// refusal says what a gateway refusal means and what to do; the same words every time, so a
// resource is warned once, not at every retry.
func refusal(status int) string {
	const waits = " Every KMS call waits meanwhile (so retries do not get the access key locked), and is tried again " +
		"with backoff, up to every 5 minutes."
	if status == http.StatusNotFound {
		return "The Huawei Cloud API gateway does not know the KMS operations here (HTTP 404, APIGW.0101): check " +
			"--huaweicloud-endpoint, --huaweicloud-region and --huaweicloud-project-id." + waits
	}
	return fmt.Sprintf("Huawei Cloud refused the operator's credentials (HTTP %d): fix the access key and secret key in "+
		"the credentials Secret (or the agency).", status) + waits
}

func (b *breaker) unavailable(now time.Time) error {
	wait := max(b.until.Sub(now), time.Second)
	return &kms.UnavailableError{RetryAfter: wait, Reason: b.reason}
}
