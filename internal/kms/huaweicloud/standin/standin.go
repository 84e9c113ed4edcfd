// Package standin is a stand-in for Huawei Cloud KMS, built from its published API reference and
// the facts in KMS-FACTS.md, for tests: it serves the REST operations the provider uses over
// loopback, keeps keys in memory with the documented key_state codes, error codes and units,
// applies deletion dates and material expiry on its own clock, and refuses any request not
// signed with its AK/SK (SDK-HMAC-SHA256). It is not the cloud: error codes the facts do not
// name are answered by HTTP status alone.
package standin

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

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
// requests/s per user, KMS-FACTS.md).
func (s *Server) Throttle(fraction float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttled = fraction
}

// SetTagSearchLag makes tag searches (list-kms-by-tags) miss keys whose tags changed less than
// lag ago, on the stand-in's clock. Huawei's reference does not promise that the search is
// current at once (it is served by the tag service, TMS, apart from the key itself); a provider
// must not take a miss for "no such key".
func (s *Server) SetTagSearchLag(lag time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tagSearchLag = lag
}

type key struct {
	id, alias, description, spec, usage, origin, state string
	// enterpriseProject is CreateKey's enterprise_project_id, "0" (the default project) when
	// not given (CreateKeyRequestBody), reported as sys_enterprise_project_id (KeyDetails).
	enterpriseProject string
	// frozenFrom is the state a frozen key (7) had, and gets back when it thaws.
	frozenFrom string
	// tagged is when the key's tags last changed.
	tagged time.Time
	// activating counts the describes still to answer key_state 1, "pending activation": a new
	// key reports it for a while before 2 or 5 (KMS-FACTS.md; Terraform waits for 2 or 5).
	activating            int
	created, deletionDate time.Time
	material              []byte
	materialHash          []byte
	materialExpires       time.Time
	wrapping              *rsa.PrivateKey
	token                 string
	tokenExpires          time.Time
	tags                  map[string]string
	rotation              rotation
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

// Unsigned counts requests refused for a missing or wrong signature.
func (s *Server) Unsigned() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unsigned
}

// Advance moves the stand-in's clock, as time passes in the cloud.
func (s *Server) Advance(d time.Duration) { s.Clock.Step(d) }

// CreateKeyInConsole makes a KMS-generated key with no tags, as a person in the console (or
// Terraform) would, and returns its ID.
func (s *Server) CreateKeyInConsole(alias string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp, apiErr := s.create(alias, "AES_256", "ENCRYPT_DECRYPT", "kms", "", "")
	if apiErr != nil {
		return "", fmt.Errorf("%s: %s", apiErr.code, apiErr.msg)
	}
	return resp.(map[string]any)["key_info"].(map[string]any)["key_id"].(string), nil
}

// Fail makes the next times requests of operation op (as in the URL: "describe-key",
// "create-key", "{key_id}/tags/action" is "tags/action") answer with status and error code
// instead of being served, as the cloud does under load or in an outage: KMS.0105 "system
// exception" is an HTTP 400 the caller should retry (KMS-FACTS.md), 429 is throttling, and
// 401 APIGW.0301 is the gateway refusing the credentials.
func (s *Server) Fail(op string, times, status int, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range times {
		s.faults[op] = append(s.faults[op], fail(status, code, "injected by the test"))
	}
}

// Freeze freezes a key as Huawei does when the account is in arrears: it reports key_state 7
// and refuses every change (KMS-FACTS.md). Thaw gives it back its state.
func (s *Server) Freeze(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[id]; ok && k.state != "7" {
		k.frozenFrom, k.state = k.state, "7"
	}
}

// Thaw ends a Freeze.
func (s *Server) Thaw(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[id]; ok && k.state == "7" {
		k.state = k.frozenFrom
	}
}

func (s *Server) throttle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttled > 0 && s.rng.Float64() < s.throttled
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

// missing answers a request for a key the KMS does not have as Huawei does: HTTP 400, KMS.0207
// for a key it deleted, KMS.0205 (invalid key ID) for one it never had; never 404, which only
// the API gateway gives, for a path it does not know (KMS-FACTS.md, "Verified against the SDK":
// Huawei's error-code table and the Huawei/OTC Terraform providers).
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

var aliasPattern = regexp.MustCompile(`^[a-zA-Z0-9:/_-]{1,255}$`)

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

// MaterialRemovalDelay is how late the stand-in removes expired imported material. Huawei's
// KMS deletes it "within 24 h" of expiration_time (KMS-FACTS.md), so a key stays Enabled past
// its expiry for a while; the stand-in takes six hours.
const MaterialRemovalDelay = 6 * time.Hour

// applyTime deletes keys past their deletion date and expires imported material, as the cloud
// does on its own.
func (s *Server) applyTime() {
	now := s.Clock.Now()
	for id, k := range s.keys {
		if k.state == "4" && !k.deletionDate.After(now) {
			delete(s.keys, id)
			s.deleted[id] = true
			continue
		}
		s.rotateDue(k, now)
		if k.material != nil && !k.materialExpires.IsZero() && !k.materialExpires.Add(MaterialRemovalDelay).After(now) {
			k.material, k.materialExpires = nil, time.Time{}
			if k.state == "2" || k.state == "3" {
				k.state = "5"
			}
		}
	}
}

func (s *Server) create(alias, spec, usage, origin, description, enterpriseProject string) (any, *apiError) {
	if !aliasPattern.MatchString(alias) {
		return nil, fail(http.StatusBadRequest, "KMS.0001", "invalid key_alias")
	}
	for _, k := range s.keys {
		if k.alias == alias {
			return nil, fail(http.StatusBadRequest, "KMS.0001", "key_alias already exists")
		}
	}
	s.next++
	k := &key{id: fmt.Sprintf("%08x-0000-4000-8000-%012x", s.next, s.next), alias: alias, description: description,
		spec: orDefault(spec, "AES_256"), usage: orDefault(usage, "ENCRYPT_DECRYPT"), origin: orDefault(origin, "kms"),
		state: "2", created: s.Clock.Now(), tags: map[string]string{}, enterpriseProject: orDefault(enterpriseProject, "0"),
		activating: s.activation}
	if k.origin == "external" {
		k.state = "5"
	} else {
		k.material = make([]byte, 32)
		_, _ = rand.Read(k.material)
	}
	s.keys[k.id] = k
	return map[string]any{"key_info": map[string]any{"key_id": k.id, "domain_id": "standin-domain"}}, nil
}

func (s *Server) tag(id string, req map[string]any) (any, *apiError) {
	k, ok := s.keys[id]
	if !ok {
		return nil, s.missing(id)
	}
	t, _ := req["tag"].(map[string]any)
	name, _ := t["key"].(string)
	value, _ := t["value"].(string)
	k.tags[name] = value
	k.tagged = s.Clock.Now()
	return map[string]any{}, nil
}

// batchTags adds or deletes tags: POST /v1.0/{project_id}/kms/{key_id}/tags/action with
// action "create" or "delete" (Huawei API reference, BatchCreateKmsTags: keys up to 36
// characters, values up to 43, at most 10 tags a key). A create with a tag key the key already
// has is refused with KMS.0406 "Invalid tagKey.", as Open Telekom Cloud's KMS (Huawei's, run by
// T-Systems) answers (Open Telekom Cloud Terraform provider, issue 2802: tags set again on a
// key that has them). The reference does not say; a provider that deletes before it creates
// works whether the KMS refuses such a create or overwrites the value.
func (s *Server) batchTags(id string, req map[string]any) (any, *apiError) {
	k, ok := s.keys[id]
	if !ok {
		return nil, s.missing(id)
	}
	action, _ := req["action"].(string)
	tags, _ := req["tags"].([]any)
	next := map[string]string{}
	for name, value := range k.tags {
		next[name] = value
	}
	for _, t := range tags {
		tm, _ := t.(map[string]any)
		name, _ := tm["key"].(string)
		value, _ := tm["value"].(string)
		// Characters, not bytes: "36 Unicode characters" (BatchCreateKmsTags reference, TagItem).
		if name == "" || utf8.RuneCountInString(name) > 36 || utf8.RuneCountInString(value) > 43 {
			return nil, fail(http.StatusBadRequest, "KMS.0002", "invalid tag")
		}
		switch action {
		case "create":
			if _, exists := k.tags[name]; exists {
				return nil, fail(http.StatusBadRequest, "KMS.0406", "Invalid tagKey.")
			}
			next[name] = value
		case "delete":
			delete(next, name)
		default:
			return nil, fail(http.StatusBadRequest, "KMS.0002", "action must be create or delete")
		}
	}
	if len(next) > 10 {
		return nil, fail(http.StatusBadRequest, "KMS.0002", "a key has at most 10 tags")
	}
	k.tags = next
	k.tagged = s.Clock.Now()
	return map[string]any{}, nil
}

func (s *Server) findByTags(req map[string]any) (any, *apiError) {
	tags, _ := req["tags"].([]any)
	var found []map[string]any
	ids := make([]string, 0, len(s.keys))
	for id := range s.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		k := s.keys[id]
		if s.tagSearchLag > 0 && s.Clock.Since(k.tagged) < s.tagSearchLag {
			continue // not yet in the tag service's index
		}
		match := true
		for _, t := range tags {
			tm, _ := t.(map[string]any)
			name, _ := tm["key"].(string)
			values, _ := tm["values"].([]any)
			ok := false
			for _, v := range values {
				ok = ok || v == k.tags[name]
			}
			match = match && ok
		}
		if match {
			found = append(found, map[string]any{"resource_id": k.id, "resource_name": k.alias})
		}
	}
	return map[string]any{"resources": found, "total_count": len(found)}, nil
}

func (s *Server) showTags(w http.ResponseWriter, id string) {
	k, ok := s.keys[id]
	if !ok {
		e := s.missing(id)
		write(w, e.status, map[string]any{"error_code": e.code, "error_msg": e.msg})
		return
	}
	tags := []map[string]string{}
	for name, value := range k.tags {
		tags = append(tags, map[string]string{"key": name, "value": value})
	}
	write(w, http.StatusOK, map[string]any{"tags": tags, "existTagsNum": len(tags)})
}

// list pages through keys in ID order; the marker is the last ID of the previous page. Without
// key_spec only AES_256 keys are listed; "ALL" lists every key (the SDK's ListKeysRequestBody:
// key_spec defaults to AES_256, and ALL is needed to list all keys, asymmetric included).
func (s *Server) list(limit, marker, spec string) (any, *apiError) {
	n, err := strconv.Atoi(limit)
	if err != nil || n <= 0 {
		n = 1000
	}
	spec = orDefault(spec, "AES_256")
	ids := make([]string, 0, len(s.keys))
	for id, k := range s.keys {
		if id > marker && (spec == "ALL" || k.spec == spec) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	truncated := len(ids) > n
	if truncated {
		ids = ids[:n]
	}
	details := make([]map[string]any, 0, len(ids))
	for _, id := range ids {
		details = append(details, s.keys[id].details())
	}
	next := ""
	if truncated {
		next = ids[len(ids)-1]
	}
	return map[string]any{"keys": ids, "key_details": details, "next_marker": next,
		"truncated": strconv.FormatBool(truncated), "total": len(s.keys)}, nil
}

func (s *Server) move(k *key, from, to string) (any, *apiError) {
	if k.state != from {
		return nil, fail(http.StatusBadRequest, "KMS.0001", "the key state does not allow this")
	}
	k.state = to
	return map[string]any{"key_info": map[string]any{"key_id": k.id, "key_state": k.state}}, nil
}

func (s *Server) schedule(k *key, pendingDays string) (any, *apiError) {
	days, err := strconv.Atoi(pendingDays) // a string in the API, not a number
	if err != nil || days < 7 || days > 1096 {
		return nil, fail(http.StatusBadRequest, "KMS.1401", "pending_days must be 7 to 1096")
	}
	switch k.state {
	case "4":
		return nil, fail(http.StatusBadRequest, "KMS.1402", "the key is already pending deletion")
	case "2", "3", "5":
	default:
		return nil, fail(http.StatusBadRequest, "KMS.0001", "the key state does not allow this")
	}
	k.state, k.deletionDate = "4", s.Clock.Now().Add(time.Duration(days)*24*time.Hour)
	return map[string]any{"key_id": k.id, "key_state": k.state}, nil
}

func (s *Server) parameters(k *key, algorithm string) (any, *apiError) {
	switch {
	case k.origin != "external":
		return nil, fail(http.StatusBadRequest, "KMS.0309", "the key is not external")
	case k.state != "5":
		return nil, fail(http.StatusBadRequest, "KMS.0310", "the key is not pending import")
	case algorithm != "RSAES_OAEP_SHA_256":
		return nil, fail(http.StatusBadRequest, "KMS.0001", "unsupported wrapping_algorithm")
	}
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fail(http.StatusInternalServerError, "KMS.0500", err.Error())
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	token := make([]byte, 24)
	_, _ = rand.Read(token)
	k.wrapping, k.token = priv, hex.EncodeToString(token)
	k.tokenExpires = s.Clock.Now().Add(24 * time.Hour)
	return map[string]any{"key_id": k.id, "import_token": k.token, "public_key": base64.StdEncoding.EncodeToString(der),
		"expiration_time": k.tokenExpires.Unix()}, nil // seconds, unlike key timestamps
}

func (s *Server) importMaterial(k *key, token, encrypted string, expirationSeconds int64) (any, *apiError) {
	switch {
	case k.origin != "external":
		return nil, fail(http.StatusBadRequest, "KMS.0309", "the key is not external")
	case k.state != "5":
		return nil, fail(http.StatusBadRequest, "KMS.0310", "the key is not pending import")
	case s.tokenOfAnother(k, token):
		return nil, fail(http.StatusBadRequest, "KMS.2603", "the import token belongs to another key")
	case k.token == "" || token != k.token:
		return nil, fail(http.StatusBadRequest, "KMS.2605", "import token verification failed")
	case !s.Clock.Now().Before(k.tokenExpires):
		return nil, fail(http.StatusBadRequest, "KMS.2601", "invalid import token")
	}
	wrapped, err := base64.StdEncoding.DecodeString(encrypted)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "KMS.0001", "encrypted_key_material is not base64")
	}
	material, err := rsa.DecryptOAEP(sha256.New(), nil, k.wrapping, wrapped, nil)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "KMS.0001", "encrypted_key_material does not decrypt")
	}
	if want := map[string]int{"AES_256": 32, "SM4": 16}[k.spec]; len(material) != want {
		return nil, fail(http.StatusBadRequest, "KMS.0001", fmt.Sprintf("key material must be %d bytes", want))
	}
	sum := sha256.Sum256(material)
	if k.materialHash != nil && !bytes.Equal(k.materialHash, sum[:]) {
		return nil, fail(http.StatusBadRequest, "KMS.2606", "only the same key material can be imported again")
	}
	k.material, k.materialHash, k.state, k.token = material, sum[:], "2", ""
	k.materialExpires = time.Time{}
	if expirationSeconds > 0 {
		k.materialExpires = time.Unix(expirationSeconds, 0)
	}
	return map[string]any{}, nil
}

// tokenOfAnother reports whether token is the current import token of a key other than k. The
// three token refusals (KMS.2601 invalid, KMS.2603 another key's, KMS.2605 verification
// failed) are Huawei's error-code table's; which case answers which is the stand-in's reading
// of their descriptions.
func (s *Server) tokenOfAnother(k *key, token string) bool {
	for _, other := range s.keys {
		if other != k && other.token != "" && other.token == token {
			return true
		}
	}
	return false
}

// details renders a key as describe-key does: key timestamps in milliseconds, as strings.
func (k *key) details() map[string]any {
	d := map[string]any{"key_id": k.id, "domain_id": "standin-domain", "key_alias": k.alias, "realm": "standin",
		"key_spec": k.spec, "key_usage": k.usage, "key_description": k.description, "origin": k.origin,
		"key_state": k.state, "default_key_flag": "0", "key_type": "1",
		"creation_date": strconv.FormatInt(k.created.UnixMilli(), 10), "scheduled_deletion_date": "",
		"sys_enterprise_project_id": k.enterpriseProject}
	if k.state == "4" {
		d["scheduled_deletion_date"] = strconv.FormatInt(k.deletionDate.UnixMilli(), 10)
	}
	if !k.materialExpires.IsZero() {
		d["expiration_time"] = strconv.FormatInt(k.materialExpires.UnixMilli(), 10)
	}
	return d
}

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
