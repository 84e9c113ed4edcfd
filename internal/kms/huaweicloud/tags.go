package huaweicloud

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

var _ kms.Tagger = (*Provider)(nil)

// maxTags is how many tags a Huawei key holds, the operator's own included (BatchCreateKmsTags
// reference: at most 10 tags a key; KMS.0409 "Too many tags").
const maxTags = 10

// ownTag tells the operator's own tags (the creation token and the owner) from a user's: the
// CRD refuses user tags with this prefix.
func ownTag(name string) bool { return strings.HasPrefix(name, "cmk-operator-") }

// allTags reads every tag of the key: GET /v1.0/{project_id}/kms/{key_id}/tags.
func (p *Provider) allTags(ctx context.Context, keyID string) (map[string]string, error) {
	var resp *model.ShowKmsTagsResponse
	err := send(ctx, func() (err error) {
		resp, err = p.kms().ShowKmsTags(&model.ShowKmsTagsRequest{KeyId: keyID})
		return err
	})
	if err != nil {
		return nil, classify(err, "read the tags of", keyID, "")
	}
	tags := map[string]string{}
	if resp.Tags != nil {
		for _, t := range *resp.Tags {
			tags[t.Key] = deref(t.Value)
		}
	}
	return tags, nil
}

// Tags reports the key's tags without the operator's own.
func (p *Provider) Tags(ctx context.Context, keyID string) (map[string]string, error) {
	all, err := p.allTags(ctx, keyID)
	if err != nil {
		return nil, err
	}
	maps.DeleteFunc(all, func(name, _ string) bool { return ownTag(name) })
	return all, nil
}

// SetTags makes the key's user tags exactly tags: one batch delete of the tags removed or
// changed, then one batch create of the tags added or changed. A changed tag is deleted before
// it is created again, since Huawei answers a create of a tag key the key already has with
// KMS.0406 "Invalid tagKey" (Open Telekom Cloud Terraform provider, issue 2802); both Terraform
// providers update tags the same way, delete then create. The operator's own tags are never
// touched, and count against the KMS's 10.
func (p *Provider) SetTags(ctx context.Context, keyID string, tags map[string]string) error {
	all, err := p.allTags(ctx, keyID)
	if err != nil {
		return err
	}
	want := make([]model.TagItem, 0, len(tags))
	for name, value := range tags {
		if ownTag(name) {
			return &kms.RejectedError{Reason: fmt.Sprintf("tag %q is the operator's own; choose another key", name)}
		}
		want = append(want, model.TagItem{Key: name, Value: ptr(value)})
	}
	// What changes among the spec's tags, as for the owner's (changes), and the user tags the
	// spec no longer has.
	remove, add := changes(all, want)
	own := 0
	for name, value := range all {
		if _, kept := tags[name]; ownTag(name) {
			own++
		} else if !kept {
			remove = append(remove, model.TagItem{Key: name, Value: ptr(value)})
		}
	}
	if own+len(tags) > maxTags {
		return &kms.RejectedError{Reason: fmt.Sprintf("Huawei keeps at most %d tags on a key, and %d of key %s's are the operator's "+
			"own (its owner and provenance): spec.tags can hold at most %d here", maxTags, own, keyID, maxTags-own)}
	}
	return p.retag(ctx, keyID, remove, add)
}

// setTags adds tags to a key that has none of their keys (a new one) in one call.
func (p *Provider) setTags(ctx context.Context, id string, tags []model.TagItem) error {
	return p.retag(ctx, id, nil, tags)
}

// retag deletes the tags remove, then creates the tags add, one batch call each. A tag whose
// value changes is in both: Huawei does not overwrite a tag key the key already has (KMS.0406,
// as the stand-in's batchTags cites), so it goes before it comes back.
func (p *Provider) retag(ctx context.Context, id string, remove, add []model.TagItem) error {
	for _, batch := range []struct {
		action string
		tags   []model.TagItem
	}{{"delete", remove}, {"create", add}} {
		if len(batch.tags) == 0 {
			continue
		}
		err := send(ctx, func() error {
			_, err := p.kms().BatchCreateKmsTags(&model.BatchCreateKmsTagsRequest{KeyId: id,
				Body: &model.BatchCreateKmsTagsRequestBody{Action: batch.action, Tags: batch.tags}})
			return err
		})
		if err != nil && batch.action == "create" && errorCode(err) == "KMS.0406" && p.hasTags(ctx, id, batch.tags) {
			// The retry sent again a create the KMS had carried out before answering 5xx:
			// the tags are there.
			err = nil
		}
		if err != nil {
			return classify(err, "tag", id, "")
		}
	}
	return nil
}

// hasTags reports whether the key has each of the tags want, with its value.
func (p *Provider) hasTags(ctx context.Context, id string, want []model.TagItem) bool {
	have, err := p.allTags(ctx, id)
	if err != nil {
		return false
	}
	for _, t := range want {
		if v, ok := have[t.Key]; !ok || v != deref(t.Value) {
			return false
		}
	}
	return true
}

// changes lists what turns the tags have into want: the tags to delete (those of want's keys
// with other values) and the tags to create (want's, but those already there).
func changes(have map[string]string, want []model.TagItem) (remove, add []model.TagItem) {
	for _, t := range want {
		value, ok := have[t.Key]
		switch {
		case !ok:
			add = append(add, t)
		case value != deref(t.Value):
			remove = append(remove, model.TagItem{Key: t.Key, Value: ptr(value)})
			add = append(add, t)
		}
	}
	return remove, add
}
