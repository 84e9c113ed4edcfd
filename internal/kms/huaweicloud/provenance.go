package huaweicloud

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

var _ kms.Recorder = (*Provider)(nil)

// A key's provenance (kms.Provenance) is two tags, set with the creation token and the owner
// in the one batch that tags a new key: the cluster, which the orphan sweep searches by, and
// "<install>/<policy>/<pending days>". Both fit a tag value's 43 characters (the SDK's TagItem
// model); with the four tags of the token and owner, a key keeps 6 of its 10 (docs/huaweicloud.md).
const (
	clusterTag = "cmk-operator-cluster"
	orphanTag  = "cmk-operator-if-orphaned"
)

func provenanceTags(p kms.Provenance) []model.TagItem {
	if p.IsZero() {
		return nil
	}
	return []model.TagItem{{Key: clusterTag, Value: ptr(p.Cluster)}, orphanItem(p)}
}

func orphanItem(p kms.Provenance) model.TagItem {
	return model.TagItem{Key: orphanTag, Value: ptr(fmt.Sprintf("%s/%s/%d", p.Install, p.DeletionPolicy, p.PendingDays))}
}

// provenanceIn reads a provenance from a key's tags. A cluster tag without a well-formed policy
// tag (a tag edited by hand) is a provenance without a policy, which the sweep leaves alone.
func provenanceIn(tags map[string]string) kms.Provenance {
	p := kms.Provenance{Cluster: tags[clusterTag]}
	if p.Cluster == "" {
		return kms.Provenance{}
	}
	parts := strings.Split(tags[orphanTag], "/")
	if len(parts) != 3 {
		return p
	}
	days, err := strconv.Atoi(parts[2])
	if err != nil {
		return p
	}
	p.Install, p.DeletionPolicy, p.PendingDays = parts[0], parts[1], days
	return p
}

// Provenance reads the key's owner and provenance from its tags, in one call.
func (p *Provider) Provenance(ctx context.Context, keyID string) (kms.Owner, kms.Provenance, error) {
	tags, err := p.allTags(ctx, keyID)
	if err != nil {
		return kms.Owner{}, kms.Provenance{}, err
	}
	return ownerIn(tags), provenanceIn(tags), nil
}

// SetPolicy rewrites the policy tag of a key that has a provenance: delete, then create (a tag
// key is not overwritten; see retag). A policy tag that a retag deleted and never created again
// (or one edited by hand) has lost the install: the caller's is written back.
func (p *Provider) SetPolicy(ctx context.Context, keyID string, want kms.Provenance) error {
	tags, err := p.allTags(ctx, keyID)
	if err != nil {
		return err
	}
	prov := provenanceIn(tags)
	if prov.IsZero() || prov.Install != "" && prov.DeletionPolicy == want.DeletionPolicy && prov.PendingDays == want.PendingDays {
		return nil
	}
	if prov.Install == "" {
		prov.Install = want.Install
	}
	prov.DeletionPolicy, prov.PendingDays = want.DeletionPolicy, want.PendingDays
	remove, add := changes(tags, []model.TagItem{orphanItem(prov)})
	return p.retag(ctx, keyID, remove, add)
}

// madeInPage is the most list-kms-by-tags returns at once ("limit": 1 to 1000, the SDK's
// ListKmsByTagsRequestBody).
const madeInPage = 1000

// MadeIn pages through the keys tagged with this cluster: POST
// /v1.0/{project_id}/kms/resource_instances/action, action "filter", by offset. Each resource
// carries its tags and key details (the SDK's ActionResources model). Deleted keys (key_state
// 5) are left out.
func (p *Provider) MadeIn(ctx context.Context, cluster string) ([]kms.Made, error) {
	var made []kms.Made
	for offset := 0; ; offset += madeInPage {
		action, limit, off := "filter", strconv.Itoa(madeInPage), strconv.Itoa(offset)
		var resp *model.ListKmsByTagsResponse
		err := send(ctx, func() (err error) {
			resp, err = p.kms().ListKmsByTags(&model.ListKmsByTagsRequest{ResourceInstances: "resource_instances",
				Body: &model.ListKmsByTagsRequestBody{Action: &action, Limit: &limit, Offset: &off,
					Tags: &[]model.Tag{{Key: ptr(clusterTag), Values: &[]string{cluster}}}}})
			return err
		})
		if err != nil {
			return nil, classify(err, "list the keys of cluster", cluster, "")
		}
		page := []model.ActionResources{}
		if resp.Resources != nil {
			page = *resp.Resources
		}
		for _, r := range page {
			if m, ok := madeOf(r); ok {
				made = append(made, m)
			}
		}
		if len(page) < madeInPage {
			return made, nil
		}
	}
}

func madeOf(r model.ActionResources) (kms.Made, bool) {
	if r.ResourceId == nil {
		return kms.Made{}, false
	}
	tags := map[string]string{}
	if r.Tags != nil {
		for _, t := range *r.Tags {
			tags[t.Key] = deref(t.Value)
		}
	}
	key := kms.Key{ID: *r.ResourceId}
	if r.ResourceDetail != nil {
		if k, err := toKey(r.ResourceDetail); err == nil {
			key = k
		}
	}
	if key.State == kms.StateDeleted {
		return kms.Made{}, false
	}
	return kms.Made{Key: key, Token: tags[uidTag], Owner: ownerIn(tags), Provenance: provenanceIn(tags)}, true
}
