package standin

import (
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"time"
)

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
	// key reports it for a while before 2 or 5 (the SDK's KeyDetails model names 1; Huawei's
	// Terraform provider waits for 2 or 5; docs/huaweicloud.md).
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

var aliasPattern = regexp.MustCompile(`^[a-zA-Z0-9:/_-]{1,255}$`)

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

// MaterialRemovalDelay is how late the stand-in removes expired imported material. Huawei's
// KMS deletes it "within 24 h" of expiration_time (the SDK's ImportKeyMaterialRequestBody;
// docs/huaweicloud.md), so a key stays Enabled past its expiry for a while; the stand-in
// takes six hours.
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

// Freeze freezes a key as Huawei does when the account is in arrears: it reports key_state 7
// and refuses every change (the SDK's KeyStatusInfo model names 7; docs/huaweicloud.md). Thaw
// gives it back its state.
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

// KeyIDs lists every key the stand-in holds, deleted ones aside, in ID order: what a person
// sees in the console, with no tag search in between.
func (s *Server) KeyIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.keys))
	for id := range s.keys {
		if !s.deleted[id] {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}
