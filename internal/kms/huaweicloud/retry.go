package huaweicloud

import (
	"context"
	"io"
	"net/http"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// retrying sends a request again when the KMS answers that it could not take it now: 429
// (throttled: about 20 requests/s per user) and 500/502/504, three to five times with backoff
// (docs/huaweicloud.md). A create-key is sent again only after a 429, which says it was not taken:
// after a 5xx the key may exist, and a second send would make a second one; that is left to the
// caller, who finds the first by its tag. Each attempt has a timeout of its own (5-8 s for a
// 502/504, docs/huaweicloud.md), so a slow failure still leaves time for the next attempt.
type retrying struct {
	next       http.RoundTripper
	attempts   int
	backoff    time.Duration
	perAttempt time.Duration
}

func (r *retrying) RoundTrip(req *http.Request) (*http.Response, error) {
	delay := r.backoff
	for attempt := 1; ; attempt++ {
		resp, err := r.send(req, attempt)
		if err != nil || attempt >= r.attempts || !r.again(req, resp.StatusCode) || (req.Body != nil && req.GetBody == nil) {
			return resp, err
		}
		_ = resp.Body.Close()
		timer := time.NewTimer(wait.Jitter(delay, 0.5))
		select {
		case <-req.Context().Done():
			timer.Stop()
			return nil, req.Context().Err()
		case <-timer.C:
		}
		delay *= 2
	}
}

// send makes one attempt under its own timeout, which ends when the answer's body is closed.
func (r *retrying) send(req *http.Request, attempt int) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(req.Context(), r.perAttempt)
	try := req.Clone(ctx)
	if attempt > 1 && req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			cancel()
			return nil, err
		}
		try.Body = body
	}
	resp, err := r.next.RoundTrip(try)
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	defer c.cancel()
	return c.ReadCloser.Close()
}

func (r *retrying) again(req *http.Request, status int) bool {
	switch status {
	case http.StatusTooManyRequests:
		return true
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout:
		return !strings.HasSuffix(req.URL.Path, "/create-key")
	}
	return false
}
