package standin

import (
	"net/http"
	"unicode/utf8"
)

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
