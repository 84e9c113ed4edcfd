package standin

import (
	"net/http"
	"sort"
	"strconv"
	"time"
)

// SetTagSearchLag makes tag searches (list-kms-by-tags) miss keys whose tags changed less than
// lag ago, on the stand-in's clock. Huawei's reference does not promise that the search is
// current at once (it is served by the tag service, TMS, apart from the key itself); a provider
// must not take a miss for "no such key".
func (s *Server) SetTagSearchLag(lag time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tagSearchLag = lag
}

// findByTags answers list-kms-by-tags (POST /v1.0/{project_id}/kms/resource_instances/action,
// action "filter"): the keys with every tag asked for, in ID order, a page of "limit" (default
// 10, 1 to 1000) from "offset" (default 0), each with its details and tags, and the total
// (the SDK's ListKmsByTagsRequestBody and ActionResources models).
func (s *Server) findByTags(req map[string]any) (any, *apiError) {
	tags, _ := req["tags"].([]any)
	limit, offset := 10, 0
	if v, ok := req["limit"].(string); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return nil, fail(http.StatusBadRequest, "KMS.0002", "limit must be 1 to 1000")
		}
		limit = n
	}
	if v, ok := req["offset"].(string); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, fail(http.StatusBadRequest, "KMS.0002", "offset must be a number, not negative")
		}
		offset = n
	}
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
			itemTags := []map[string]string{}
			for name, value := range k.tags {
				itemTags = append(itemTags, map[string]string{"key": name, "value": value})
			}
			found = append(found, map[string]any{"resource_id": k.id, "resource_name": k.alias,
				"resource_detail": k.details(), "tags": itemTags})
		}
	}
	page := found[min(offset, len(found)):min(offset+limit, len(found))]
	return map[string]any{"resources": page, "total_count": len(found)}, nil
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
