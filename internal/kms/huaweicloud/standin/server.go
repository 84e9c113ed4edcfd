// Package standin is a stand-in for Huawei Cloud KMS, built from its published API reference and
// the facts in docs/huaweicloud.md (with their sources), for tests: it serves the REST operations
// the provider uses over loopback, keeps keys in memory with the documented key_state codes, error
// codes and units, applies deletion dates and material expiry on its own clock, and refuses any
// request not signed with its AK/SK (SDK-HMAC-SHA256). It is not the cloud: error codes the facts
// do not name are answered by HTTP status alone.
package standin

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// Server is the stand-in KMS.
type Server struct {
	AK, SK, ProjectID string
	Clock             *clocktesting.FakeClock
	URL               string

	srv      *httptest.Server
	mu       sync.Mutex
	keys     map[string]*key
	next     int
	unsigned int
	// deleted remembers the IDs of keys the KMS deleted, which answer KMS.0207.
	deleted map[string]bool
	// faults are answers to give instead of serving, by operation (see Fail).
	faults map[string][]*apiError
	// tagSearchLag is how long a key's new tags take to show in tag searches (see
	// SetTagSearchLag).
	tagSearchLag time.Duration
	// throttled is the fraction of requests answered 429 (see Throttle), drawn from rng.
	throttled float64
	rng       *mathrand.Rand
	// calls counts the signed requests by operation (see Calls).
	calls map[string]int
	// activation is how many describes of a new key answer key_state 1 (see SetActivation).
	activation int
	// securityToken is the X-Security-Token of the last signed request (temporary credentials).
	securityToken string
	// latency delays every answer (see SetLatency).
	latency time.Duration
}

// Start serves the stand-in on loopback until Close.
func Start(now time.Time) *Server { return StartOn(now, nil) }

// StartOn serves the stand-in on l until Close: an address a pod can reach, for make e2e's
// cluster; loopback when l is nil.
func StartOn(now time.Time, l net.Listener) *Server {
	s := &Server{AK: "STANDINAK0000000000", SK: "standin-secret-key-for-tests", ProjectID: "0123456789abcdef0123456789abcdef",
		Clock: clocktesting.NewFakeClock(now), keys: map[string]*key{}, deleted: map[string]bool{}, faults: map[string][]*apiError{},
		rng: mathrand.New(mathrand.NewPCG(1, 2)), calls: map[string]int{}, activation: 1}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	if l != nil {
		_ = s.srv.Listener.Close()
		s.srv.Listener = l
	}
	s.srv.Start()
	s.URL = s.srv.URL
	return s
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// Advance moves the stand-in's clock, as time passes in the cloud.
func (s *Server) Advance(d time.Duration) { s.Clock.Step(d) }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := s.verify(r, body); err != nil {
		s.mu.Lock()
		s.unsigned++
		s.mu.Unlock()
		write(w, http.StatusUnauthorized, map[string]any{"error_code": "APIGW.0301", "error_msg": err.Error()})
		return
	}
	s.count(r.URL.Path)
	s.mu.Lock()
	s.securityToken = r.Header.Get("X-Security-Token")
	latency := s.latency
	s.mu.Unlock()
	time.Sleep(latency)
	if s.throttle() {
		write(w, http.StatusTooManyRequests, map[string]any{"error_code": "APIGW.0308", "error_msg": "the request is throttled"})
		return
	}
	prefix := "/v1.0/" + s.ProjectID + "/kms/"
	if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, prefix) && strings.HasSuffix(r.URL.Path, "/tags") {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.showTags(w, strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, prefix), "/tags"))
		return
	}
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, prefix) {
		write(w, http.StatusNotFound, map[string]any{"error_code": "APIGW.0101", "error_msg": "no such operation"})
		return
	}
	op := strings.TrimPrefix(r.URL.Path, prefix)
	var req map[string]any
	_ = json.Unmarshal(body, &req)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyTime()
	var resp any
	apiErr := s.fault(op) // an injected failure: the request is not carried out
	if apiErr == nil {
		resp, apiErr = s.dispatch(op, req)
	}
	if apiErr != nil {
		write(w, apiErr.status, map[string]any{"error_code": apiErr.code, "error_msg": apiErr.msg})
		return
	}
	write(w, http.StatusOK, resp)
}

func (s *Server) dispatch(op string, req map[string]any) (any, *apiError) {
	str := func(name string) string { v, _ := req[name].(string); return v }
	if strings.HasSuffix(op, "/tags") {
		return s.tag(strings.TrimSuffix(op, "/tags"), req)
	}
	if strings.HasSuffix(op, "/tags/action") {
		return s.batchTags(strings.TrimSuffix(op, "/tags/action"), req)
	}
	switch op {
	case "create-key":
		return s.create(str("key_alias"), str("key_spec"), str("key_usage"), str("origin"), str("key_description"), str("enterprise_project_id"))
	case "resource_instances/action":
		return s.findByTags(req)
	case "list-keys":
		return s.list(str("limit"), str("marker"), str("key_spec"))
	}
	k, ok := s.keys[str("key_id")]
	if !ok {
		return nil, s.missing(str("key_id"))
	}
	if k.state == "7" && op != "describe-key" {
		return nil, fail(http.StatusBadRequest, "KMS.0001", "the key is frozen")
	}
	switch op {
	case "describe-key":
		d := k.details()
		if k.activating > 0 {
			k.activating--
			d["key_state"] = "1"
		}
		return map[string]any{"key_info": d}, nil
	case "enable-key":
		return s.move(k, "3", "2")
	case "disable-key":
		return s.move(k, "2", "3")
	case "schedule-key-deletion":
		return s.schedule(k, str("pending_days"))
	case "cancel-key-deletion":
		if k.state != "4" {
			return nil, fail(http.StatusBadRequest, "KMS.1501", "the key is not pending deletion")
		}
		k.state, k.deletionDate = "3", time.Time{}
		if k.material == nil {
			k.state = "5"
		}
		return map[string]any{"key_id": k.id, "key_state": k.state}, nil
	case "update-key-description":
		k.description = str("key_description")
		return map[string]any{"key_info": map[string]any{"key_id": k.id}}, nil
	case "enable-key-rotation", "disable-key-rotation", "update-key-rotation-interval", "get-key-rotation-status":
		return s.rotate(k, op, req)
	case "get-parameters-for-import":
		return s.parameters(k, str("wrapping_algorithm"))
	case "import-key-material":
		exp, _ := req["expiration_time"].(float64)
		return s.importMaterial(k, str("import_token"), str("encrypted_key_material"), int64(exp))
	}
	return nil, fail(http.StatusNotFound, "APIGW.0101", "no such operation: "+op)
}

// missing answers a request for a key the KMS does not have as Huawei does: HTTP 400, KMS.0207
// for a key it deleted, KMS.0205 (invalid key ID) for one it never had; never 404, which only
// the API gateway gives, for a path it does not know (Huawei's error-code table and the
// Huawei/OTC Terraform providers; docs/huaweicloud.md).
func (s *Server) missing(id string) *apiError {
	if s.deleted[id] {
		return fail(http.StatusBadRequest, "KMS.0207", "the key does not exist")
	}
	return fail(http.StatusBadRequest, "KMS.0205", "invalid key ID")
}

type apiError struct {
	status int
	code   string
	msg    string
}

func fail(status int, code, msg string) *apiError { return &apiError{status, code, msg} }

// verify checks the SDK-HMAC-SHA256 signature of a request, recomputed from the request as
// received: canonical request, string to sign with X-Sdk-Date, HMAC-SHA256 under the SK.
func (s *Server) verify(r *http.Request, body []byte) error {
	auth := r.Header.Get("Authorization")
	const alg = "SDK-HMAC-SHA256 "
	if !strings.HasPrefix(auth, alg) {
		return fmt.Errorf("request not signed with SDK-HMAC-SHA256")
	}
	fields := map[string]string{}
	for _, part := range strings.Split(strings.TrimPrefix(auth, alg), ", ") {
		if name, value, ok := strings.Cut(part, "="); ok {
			fields[name] = value
		}
	}
	if fields["Access"] != s.AK {
		return fmt.Errorf("unknown access key")
	}
	date := r.Header.Get("X-Sdk-Date")
	signed, err := time.Parse("20060102T150405Z", date)
	if err != nil || time.Since(signed).Abs() > 15*time.Minute {
		return fmt.Errorf("X-Sdk-Date missing or too far from now")
	}
	headers := strings.Split(fields["SignedHeaders"], ";")
	var canonical strings.Builder
	for _, h := range headers {
		v := r.Header.Get(h)
		if h == "host" {
			v = r.Host
		}
		canonical.WriteString(h + ":" + strings.TrimSpace(v) + "\n")
	}
	uri := r.URL.EscapedPath()
	if !strings.HasSuffix(uri, "/") {
		uri += "/"
	}
	bodyHash := sha256.Sum256(body)
	request := strings.Join([]string{r.Method, uri, r.URL.RawQuery, canonical.String(), fields["SignedHeaders"], hex.EncodeToString(bodyHash[:])}, "\n")
	requestHash := sha256.Sum256([]byte(request))
	stringToSign := "SDK-HMAC-SHA256\n" + date + "\n" + hex.EncodeToString(requestHash[:])
	s.mu.Lock()
	sk := s.SK
	s.mu.Unlock()
	mac := hmac.New(sha256.New, []byte(sk))
	mac.Write([]byte(stringToSign))
	if !hmac.Equal([]byte(hex.EncodeToString(mac.Sum(nil))), []byte(fields["Signature"])) {
		return fmt.Errorf("signature does not match")
	}
	return nil
}

func write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
