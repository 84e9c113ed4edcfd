package huaweicloud

import (
	"context"
	"fmt"
	"sync"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// uidTag is the tag key that carries the creation token (the resource's UID): a key with it
// was made by the operator.
const uidTag = "cmk-operator-uid"

// The owner's tags (kms.Owner). Huawei tag keys hold at most 36 characters and values at most
// 43 (the SDK's TagItem model, as the BatchCreateKmsTags reference; docs/huaweicloud.md), so a
// longer namespace or name is recorded shortened (kms.Shorten).
const (
	ownerNamespaceTag = "cmk-operator-owner-namespace"
	ownerNameTag      = "cmk-operator-owner-name"
	ownerUIDTag       = "cmk-operator-owner-uid"
	maxTagValue       = 43
)

// Lookup finds the key a Create with this token made, by the UID tag Create puts on it. A
// create that died between making the key and tagging it is not found (see Create).
func (p *Provider) Lookup(ctx context.Context, token string) (kms.Key, error) {
	id, err := p.findByToken(ctx, token)
	if err != nil {
		return kms.Key{}, err
	}
	if id == "" {
		return kms.Key{}, &kms.NotFoundError{Token: token}
	}
	return p.Observe(ctx, id)
}

// tagNew tags a new key with the creation token, so a retried Create finds it, with its owner
// and with its provenance, in one call.
func (p *Provider) tagNew(ctx context.Context, id string, req kms.CreateRequest) (kms.Key, error) {
	tags := append([]model.TagItem{{Key: uidTag, Value: ptr(req.Token)}}, ownerTags(req.Owner)...)
	tags = append(tags, provenanceTags(req.Provenance)...)
	if err := p.setTags(ctx, id, tags); err != nil {
		return kms.Key{}, err
	}
	return p.activated(ctx, id)
}

func ownerTags(o kms.Owner) []model.TagItem {
	if o.IsZero() {
		return nil
	}
	return []model.TagItem{
		{Key: ownerNamespaceTag, Value: ptr(kms.Shorten(o.Namespace, maxTagValue))},
		{Key: ownerNameTag, Value: ptr(kms.Shorten(o.Name, maxTagValue))},
		{Key: ownerUIDTag, Value: ptr(o.UID)},
	}
}

// Owner reads the owner's tags. A key made before owner tags existed has only its creation
// token, which is its creating resource's UID: its owner is that UID in a namespace unknown,
// until that resource claims it again. A key with an owner namespace but no owner UID is one
// whose claim died between deleting the previous owner's tags and writing the new ones: it
// stays its namespace's, owned by no resource that lives (claimInterrupted), so only a
// resource of that namespace may take it, as from any owner that is gone.
func (p *Provider) Owner(ctx context.Context, keyID string) (kms.Owner, error) {
	tags, err := p.allTags(ctx, keyID)
	if err != nil {
		return kms.Owner{}, err
	}
	return ownerIn(tags), nil
}

// claimInterrupted is the owner UID of a key whose claim died halfway: no resource has it.
const claimInterrupted = "claim-interrupted"

func ownerIn(tags map[string]string) kms.Owner {
	o := kms.Owner{Namespace: tags[ownerNamespaceTag], Name: tags[ownerNameTag], UID: tags[ownerUIDTag]}
	switch {
	case o.UID == "" && o.Namespace != "":
		o.UID = claimInterrupted
	case o.UID == "":
		o = kms.Owner{UID: tags[uidTag]}
	}
	return o
}

// Claim writes the owner's tags if the recorded owner is still previous. Tags have no
// compare-and-swap, so the read, the comparison and the write are one critical section per key
// in this process: claims come only from the operator's leader, whose workers run
// concurrently, so two resources claiming one key never both pass the comparison. The owner is
// read back after the write, so a person tagging by hand meanwhile makes the claim lose.
func (p *Provider) Claim(ctx context.Context, keyID string, owner, previous kms.Owner) error {
	if owner.IsZero() {
		return fmt.Errorf("claim key %s: no owner given", keyID)
	}
	lock, _ := p.claiming.LoadOrStore(keyID, &sync.Mutex{})
	lock.(*sync.Mutex).Lock()
	defer lock.(*sync.Mutex).Unlock()
	tags, err := p.allTags(ctx, keyID)
	if err != nil {
		return err
	}
	now := ownerIn(tags)
	if sameOwner(now, owner) {
		return nil
	}
	// A key never moves across namespaces (the reconciler's adoption rules, held here too), so
	// the namespace tag is only ever added: between the two calls below the key is still its
	// namespace's.
	if !sameOwner(now, previous) || now.Namespace != "" && !now.In(owner.Namespace) {
		return &kms.ClaimError{KeyID: keyID}
	}
	remove, add := changes(tags, ownerTags(owner))
	if err := p.retag(ctx, keyID, remove, add); err != nil {
		return err
	}
	after, err := p.Owner(ctx, keyID)
	if err != nil {
		return err
	}
	if !sameOwner(after, owner) {
		return &kms.ClaimError{KeyID: keyID}
	}
	return nil
}

// sameOwner compares an owner as read from tags with one as the caller knows it.
func sameOwner(tagged, o kms.Owner) bool {
	if o.IsZero() || tagged.IsZero() {
		return o.IsZero() && tagged.IsZero()
	}
	if tagged.Namespace == "" {
		return tagged.UID == o.UID && o.Namespace == "" // made before owner tags existed
	}
	return tagged.UID == o.UID && tagged.Is(o.Namespace, o.Name)
}

type madeFor int

const (
	madeElsewhere madeFor = iota // another's, or unknown: an alias conflict
	madeTagged                   // tagged with this request's creation token
	madeUntagged                 // untagged, made within this request's recorded attempt
)

// madeBy tells whether the key holding the request's alias is the request's own: tagged with
// its creation token, or carrying no operator tag at all and made after its recorded create
// attempt began. Any other key is never taken: one made earlier, in a console, by Terraform,
// may share the alias (docs/huaweicloud.md: never claim a key by alias alone).
func (p *Provider) madeBy(ctx context.Context, id string, req kms.CreateRequest) madeFor {
	var resp *model.ShowKmsTagsResponse
	err := send(ctx, func() (err error) { resp, err = p.kms().ShowKmsTags(&model.ShowKmsTagsRequest{KeyId: id}); return err })
	if err != nil {
		return madeElsewhere
	}
	if resp.Tags != nil {
		for _, t := range *resp.Tags {
			switch {
			case t.Key == uidTag && deref(t.Value) == req.Token:
				return madeTagged
			case ownTag(t.Key):
				return madeElsewhere
			}
		}
	}
	if req.Attempted.IsZero() {
		return madeElsewhere
	}
	var detail *model.ListKeyDetailResponse
	err = send(ctx, func() (err error) {
		detail, err = p.kms().ListKeyDetail(&model.ListKeyDetailRequest{Body: &model.OperateKeyRequestBody{KeyId: id}})
		return err
	})
	if err != nil || detail.KeyInfo == nil {
		return madeElsewhere
	}
	made := millis(deref(detail.KeyInfo.CreationDate))
	// No allowance for clock skew: a key made a moment before the attempt may be a person's,
	// and a key of the attempt's that the KMS's clock dates earlier is only reported as an
	// alias conflict, which spec.keyID settles.
	if made.IsZero() || made.Before(req.Attempted) || made.After(req.Attempted.Add(kms.AttemptWindow)) {
		return madeElsewhere
	}
	return madeUntagged
}

// findByAlias pages through the project's keys, of every spec, for the one with this alias.
// list-keys without key_spec lists only AES_256 keys (the SDK's ListKeysRequestBody: "ALL"
// is needed for all keys, asymmetric included).
func (p *Provider) findByAlias(ctx context.Context, alias string) (string, error) {
	limit, marker := "100", ""
	all := model.GetListKeysRequestBodyKeySpecEnum().ALL
	for {
		body := &model.ListKeysRequestBody{Limit: &limit, KeySpec: &all}
		if marker != "" {
			body.Marker = &marker
		}
		var resp *model.ListKeysResponse
		err := send(ctx, func() (err error) { resp, err = p.kms().ListKeys(&model.ListKeysRequest{Body: body}); return err })
		if err != nil {
			return "", err
		}
		if resp.KeyDetails != nil {
			for _, d := range *resp.KeyDetails {
				if deref(d.KeyAlias) == alias && d.KeyId != nil {
					return *d.KeyId, nil
				}
			}
		}
		if resp.NextMarker == nil || *resp.NextMarker == "" || *resp.NextMarker == marker {
			return "", nil
		}
		marker = *resp.NextMarker
	}
}

// findByToken finds the key made with this creation token, else the key claimed for an owner
// with this UID (the operator's tokens are resource UIDs).
func (p *Provider) findByToken(ctx context.Context, token string) (string, error) {
	id, err := p.findByTag(ctx, uidTag, token)
	if err != nil || id != "" {
		return id, err
	}
	return p.findByTag(ctx, ownerUIDTag, token)
}

func (p *Provider) findByTag(ctx context.Context, tag, value string) (string, error) {
	action, limit := "filter", "1"
	var resp *model.ListKmsByTagsResponse
	err := send(ctx, func() (err error) {
		resp, err = p.kms().ListKmsByTags(&model.ListKmsByTagsRequest{ResourceInstances: "resource_instances",
			Body: &model.ListKmsByTagsRequestBody{Action: &action, Limit: &limit,
				Tags: &[]model.Tag{{Key: ptr(tag), Values: &[]string{value}}}}})
		return err
	})
	if err != nil {
		return "", classify(err, "find by tag", value, "")
	}
	if resp.Resources != nil {
		for _, r := range *resp.Resources {
			if r.ResourceId != nil {
				return *r.ResourceId, nil
			}
		}
	}
	return "", nil
}

var _ kms.Finder = (*Provider)(nil)

// Find reports the key Create with req made: by its creation token, else the untagged key
// with its alias made within its recorded attempt (see madeBy), which it tags now.
func (p *Provider) Find(ctx context.Context, req kms.CreateRequest) (kms.Key, error) {
	if k, err := p.Lookup(ctx, req.Token); !kms.IsNotFound(err) {
		return k, err
	}
	if req.Attempted.IsZero() {
		return kms.Key{}, &kms.NotFoundError{Token: req.Token}
	}
	id, err := p.findByAlias(ctx, req.Alias)
	if err != nil {
		return kms.Key{}, classify(err, "find by alias", req.Alias, "")
	}
	if id != "" {
		switch p.madeBy(ctx, id, req) {
		case madeTagged:
			return p.activated(ctx, id)
		case madeUntagged:
			return p.tagNew(ctx, id, req)
		}
	}
	return kms.Key{}, &kms.NotFoundError{Token: req.Token}
}
