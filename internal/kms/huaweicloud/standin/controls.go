package standin

import (
	"strings"
	"time"
)

// SetLatency delays every answer by d, as a KMS under load or far away does.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SecurityToken is the X-Security-Token the last signed request carried: temporary credentials
// (an agency's, or an STS token) send it beside the signature.
func (s *Server) SecurityToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.securityToken
}

// SetActivation sets how many describes of each new key answer key_state 1, "pending
// activation", before its real state (1 unless set).
func (s *Server) SetActivation(describes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.activation = describes
}

// Calls returns how many signed requests each operation got since the last ResetCalls, by the
// operation's name in the URL ("describe-key", "tags" for a key's tags, "tags/action").
func (s *Server) Calls() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.calls))
	for op, n := range s.calls {
		out[op] = n
	}
	return out
}

// ResetCalls starts counting anew.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = map[string]int{}
}

func (s *Server) count(path string) {
	op := path[strings.LastIndex(path, "/kms/")+len("/kms/"):]
	if i := strings.Index(op, "/tags"); i >= 0 {
		op = op[i+1:]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[op]++
}

// Throttle answers that fraction of the requests, drawn at random (with a fixed seed), with
// HTTP 429 APIGW.0308, as the gateway does to an account over its rate limit (about 20
// requests/s per user, docs/huaweicloud.md).
func (s *Server) Throttle(fraction float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttled = fraction
}

func (s *Server) throttle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttled > 0 && s.rng.Float64() < s.throttled
}

// Fail makes the next times requests of operation op (as in the URL: "describe-key", "create-key",
// "{key_id}/tags/action" is "tags/action") answer with status and error code instead of being
// served, as the cloud does under load or in an outage: KMS.0105 "system exception" is an HTTP 400
// the caller should retry (Huawei's error-code table; docs/huaweicloud.md), 429 is throttling, and
// 401 APIGW.0301 is the gateway refusing the credentials.
func (s *Server) Fail(op string, times, status int, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range times {
		s.faults[op] = append(s.faults[op], fail(status, code, "injected by the test"))
	}
}

// fault takes the next injected answer for op, if any.
func (s *Server) fault(op string) *apiError {
	if i := strings.LastIndex(op, "/tags"); i >= 0 {
		op = op[i+1:]
	}
	queue := s.faults[op]
	if len(queue) == 0 {
		return nil
	}
	s.faults[op] = queue[1:]
	return queue[0]
}

// Unsigned counts requests refused for a missing or wrong signature.
func (s *Server) Unsigned() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unsigned
}
