// Package huaweicloud drives Huawei Cloud KMS (DEW) through its official Go SDK. Facts it
// honours are in KMS-FACTS.md: key_state codes, pending_days as a string, key timestamps in
// milliseconds, import expiry in seconds, and create with no idempotency token (a tag carrying
// the resource's UID finds a key made before a crash).
package huaweicloud

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	kmsv2 "github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// uidTag is the tag key that carries the creation token (the resource's UID): a key with it
// was made by the operator.
const uidTag = "cmk-operator-uid"

// The owner's tags (kms.Owner). Huawei tag keys hold at most 36 characters and values at most
// 43 (KMS-FACTS.md; the BatchCreateKmsTags reference, TagItem), so a longer namespace or name is
// recorded shortened (kms.Shorten).
const (
	ownerNamespaceTag = "cmk-operator-owner-namespace"
	ownerNameTag      = "cmk-operator-owner-name"
	ownerUIDTag       = "cmk-operator-owner-uid"
	maxTagValue       = 43
)

// key_state codes of the API.
var states = map[string]kms.State{
	"1": kms.StateCreating,
	"2": kms.StateEnabled,
	"3": kms.StateDisabled,
	"4": kms.StatePendingDeletion,
	"5": kms.StatePendingImport,
	// 7, Frozen (the account in arrears), appears in responses (KMS-FACTS.md); it is not a
	// phase of the API but a FrozenError: nothing can be done to such a key.
	"7": kms.StateFrozen,
}

// Provider is Huawei Cloud KMS.
type Provider struct {
	clients *clients
	// claiming holds a mutex per key ID being claimed (see Claim).
	claiming sync.Map
	// enterpriseProject is the enterprise project new keys go in; empty for the default.
	enterpriseProject string
}

var (
	_ kms.Provider = (*Provider)(nil)
	_ kms.Importer = (*Provider)(nil)
)

// NewWithClient wraps an SDK client (see New for one built from configuration).
func NewWithClient(c *kmsv2.KmsClient) *Provider { return &Provider{clients: &clients{current: c}} }

// kms is the SDK client to call with: the one built from the credentials as they are now.
func (p *Provider) kms() *kmsv2.KmsClient { return p.clients.get() }

// Observe describes a key.
func (p *Provider) Observe(ctx context.Context, keyID string) (kms.Key, error) {
	if !kms.ValidKeyID(keyID) {
		// Not of the documented key_id form (see kms.ValidKeyID): no key, and nothing is sent.
		return kms.Key{}, &kms.NotFoundError{KeyID: keyID}
	}
	var resp *model.ListKeyDetailResponse
	err := send(ctx, func() (err error) {
		resp, err = p.kms().ListKeyDetail(&model.ListKeyDetailRequest{Body: &model.OperateKeyRequestBody{KeyId: keyID}})
		return err
	})
	if err != nil {
		return kms.Key{}, classify(err, "describe", keyID, "")
	}
	if resp.KeyInfo == nil {
		return kms.Key{}, &kms.NotFoundError{KeyID: keyID}
	}
	return toKey(resp.KeyInfo)
}

func toKey(d *model.KeyDetails) (kms.Key, error) {
	k := kms.Key{ID: deref(d.KeyId), Alias: deref(d.KeyAlias), Description: deref(d.KeyDescription)}
	state, ok := states[deref(d.KeyState)]
	if !ok {
		return kms.Key{}, fmt.Errorf("key %s has key_state %q, which this operator does not know", k.ID, deref(d.KeyState))
	}
	k.State = state
	if state == kms.StateFrozen {
		return kms.Key{}, &kms.FrozenError{KeyID: k.ID}
	}
	if d.KeySpec != nil {
		k.KeySpec = d.KeySpec.Value()
	}
	if d.KeyUsage != nil {
		k.KeyUsage = d.KeyUsage.Value()
	}
	k.Origin = kms.OriginKMS
	if d.Origin != nil && d.Origin.Value() == "external" {
		k.Origin = kms.OriginExternal
	}
	// Only an External key can lack material, and the API shows that as PendingImport.
	k.HasMaterial = k.Origin == kms.OriginKMS || state == kms.StateEnabled || state == kms.StateDisabled
	if state == kms.StatePendingDeletion {
		k.DeletionDate = millis(deref(d.ScheduledDeletionDate))
	}
	if k.Origin == kms.OriginExternal && k.HasMaterial {
		k.MaterialExpiresAt = millis(deref(d.ExpirationTime))
	}
	return k, nil
}

// millis reads the API's key timestamps: milliseconds since the epoch, as a string.
func millis(s string) time.Time {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

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

// Create finds the key an earlier Create with this token made (by its UID tag), else creates
// one and tags it.
func (p *Provider) Create(ctx context.Context, req kms.CreateRequest) (kms.Key, error) {
	if id, err := p.findByTag(ctx, uidTag, req.Token); err != nil || id != "" {
		if err != nil {
			return kms.Key{}, err
		}
		return p.activated(ctx, id)
	}
	body := &model.CreateKeyRequestBody{KeyAlias: req.Alias}
	if err := enum(req.KeySpec, &body.KeySpec); err != nil {
		return kms.Key{}, err
	}
	if err := enum(req.KeyUsage, &body.KeyUsage); err != nil {
		return kms.Key{}, err
	}
	origin := "kms"
	if req.Origin == kms.OriginExternal {
		origin = "external"
	}
	if err := enum(origin, &body.Origin); err != nil {
		return kms.Key{}, err
	}
	if req.Description != "" {
		body.KeyDescription = &req.Description
	}
	if p.enterpriseProject != "" {
		body.EnterpriseProjectId = &p.enterpriseProject
	}
	var resp *model.CreateKeyResponse
	err := send(ctx, func() (err error) { resp, err = p.kms().CreateKey(&model.CreateKeyRequest{Body: body}); return err })
	if err != nil {
		classified := classify(err, "create", req.Alias, "")
		if _, rejected := classified.(*kms.RejectedError); rejected {
			// An alias conflict: name the key that holds it, for the caller to judge. A key
			// with the alias and no tag is never taken for this create's own: it may as well be
			// one made in the console (KMS-FACTS.md, "Never claim a key by alias alone").
			if id, ferr := p.findByAlias(ctx, req.Alias); ferr == nil && id != "" {
				switch p.madeBy(ctx, id, req) {
				case madeTagged:
					// This create's own key, made before and tagged, which the tag search did
					// not show yet: the key's own tag is trusted over the search.
					return p.activated(ctx, id)
				case madeUntagged:
					// Made within this resource's recorded create attempt and never tagged: an
					// earlier attempt died between making and tagging it.
					return p.tagNew(ctx, id, req)
				}
				return kms.Key{}, &kms.AliasInUseError{Alias: req.Alias, KeyID: id}
			}
		}
		return kms.Key{}, classified
	}
	if resp.KeyInfo == nil || resp.KeyInfo.KeyId == nil {
		return kms.Key{}, fmt.Errorf("create key %s: the response has no key ID", req.Alias)
	}
	return p.tagNew(ctx, *resp.KeyInfo.KeyId, req)
}

// tagNew tags a new key with the creation token, so a retried Create finds it, and with its
// owner.
func (p *Provider) tagNew(ctx context.Context, id string, req kms.CreateRequest) (kms.Key, error) {
	tags := append([]model.TagItem{{Key: uidTag, Value: ptr(req.Token)}}, ownerTags(req.Owner)...)
	if err := p.setTags(ctx, id, tags); err != nil {
		return kms.Key{}, err
	}
	return p.activated(ctx, id)
}

// activated reads a new key until it leaves key_state 1 (pending activation), as Terraform
// waits for 2 or 5, for a few seconds at most: a key still activating then is reported
// Creating, and the reconciler looks at it again shortly.
func (p *Provider) activated(ctx context.Context, id string) (kms.Key, error) {
	delay := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		k, err := p.Observe(ctx, id)
		if err != nil || k.State != kms.StateCreating || attempt == 3 {
			return k, err
		}
		select {
		case <-ctx.Done():
			return k, nil
		case <-time.After(delay):
		}
		delay *= 2
	}
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

// attemptWindow is how long after a create attempt began a key may have been made and still be
// the attempt's: the window closes, so a resource that could not create its key for a long
// while does not take a key a person makes later with the same alias.
const attemptWindow = time.Hour

type madeFor int

const (
	madeElsewhere madeFor = iota // another's, or unknown: an alias conflict
	madeTagged                   // tagged with this request's creation token
	madeUntagged                 // untagged, made within this request's recorded attempt
)

// madeBy tells whether the key holding the request's alias is the request's own: tagged with
// its creation token, or carrying no operator tag at all and made after its recorded create
// attempt began. Any other key is never taken: one made earlier, in a console, by Terraform,
// may share the alias (KMS-FACTS.md: never claim a key by alias alone).
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
	if made.IsZero() || made.Before(req.Attempted) || made.After(req.Attempted.Add(attemptWindow)) {
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

// Enable moves a Disabled key to Enabled.
func (p *Provider) Enable(ctx context.Context, keyID string) error {
	return p.transition(ctx, keyID, "enable", kms.StateEnabled, []kms.State{kms.StateDisabled}, func() error {
		return send(ctx, func() error {
			_, err := p.kms().EnableKey(&model.EnableKeyRequest{Body: &model.OperateKeyRequestBody{KeyId: keyID}})
			return err
		})
	})
}

// Disable moves an Enabled key to Disabled.
func (p *Provider) Disable(ctx context.Context, keyID string) error {
	return p.transition(ctx, keyID, "disable", kms.StateDisabled, []kms.State{kms.StateEnabled}, func() error {
		return send(ctx, func() error {
			_, err := p.kms().DisableKey(&model.DisableKeyRequest{Body: &model.OperateKeyRequestBody{KeyId: keyID}})
			return err
		})
	})
}

// ScheduleDeletion schedules the key's deletion; pending_days goes as a string, as the API wants.
func (p *Provider) ScheduleDeletion(ctx context.Context, keyID string, pendingDays int) error {
	from := []kms.State{kms.StateEnabled, kms.StateDisabled, kms.StatePendingImport}
	return p.transition(ctx, keyID, "schedule deletion of", kms.StatePendingDeletion, from, func() error {
		err := send(ctx, func() error {
			_, err := p.kms().DeleteKey(&model.DeleteKeyRequest{Body: &model.ScheduleKeyDeletionRequestBody{
				KeyId: keyID, PendingDays: strconv.Itoa(pendingDays)}})
			return err
		})
		if errorCode(err) == codeAlreadyPending {
			return nil
		}
		return err
	})
}

// CancelDeletion cancels a scheduled deletion; the state it leaves (Disabled or PendingImport)
// is read back by the caller, never assumed.
func (p *Provider) CancelDeletion(ctx context.Context, keyID string) error {
	err := send(ctx, func() error {
		_, err := p.kms().CancelKeyDeletion(&model.CancelKeyDeletionRequest{Body: &model.OperateKeyRequestBody{KeyId: keyID}})
		return err
	})
	if err == nil || errorCode(err) == codeNotPending {
		return nil // canceled, or not pending: nothing to cancel
	}
	if kms.AsUnavailable(err) != nil {
		return err
	}
	k, oerr := p.Observe(ctx, keyID)
	switch {
	case oerr != nil:
		return oerr
	case k.State == kms.StateEnabled, k.State == kms.StateDisabled, k.State == kms.StatePendingImport:
		return nil
	case k.State != kms.StatePendingDeletion:
		return &kms.StateError{KeyID: keyID, Call: "cancel deletion of", State: k.State}
	}
	return classify(err, "cancel deletion of", keyID, k.State)
}

// SetDescription changes the key's description.
func (p *Provider) SetDescription(ctx context.Context, keyID, description string) error {
	err := send(ctx, func() error {
		_, err := p.kms().UpdateKeyDescription(&model.UpdateKeyDescriptionRequest{Body: &model.UpdateKeyDescriptionRequestBody{
			KeyId: keyID, KeyDescription: description}})
		return err
	})
	if err != nil {
		return classify(err, "describe", keyID, "")
	}
	return nil
}

// transition makes a state-changing call idempotent. The call is made at once: a KMS on a
// rate limit of about 20 requests/s must not pay a describe before every change, and the caller
// reads the key back after it anyway. Only a refused call is judged by the state read then: a
// key already in the target state succeeds, one in a state the call does not allow is a
// StateError, and the refusal stands otherwise.
func (p *Provider) transition(ctx context.Context, keyID, call string, target kms.State, from []kms.State, do func() error) error {
	err := do()
	if err == nil {
		return nil
	}
	if kms.AsUnavailable(err) != nil || ctx.Err() != nil {
		return err
	}
	k, oerr := p.Observe(ctx, keyID)
	switch {
	case oerr != nil:
		return oerr
	case k.State == target:
		return nil
	case !contains(from, k.State):
		return &kms.StateError{KeyID: keyID, Call: call, State: k.State}
	}
	return classify(err, call, keyID, k.State)
}

// ImportParameters asks for an RSA 2048 wrapping key; expiration_time comes back in seconds.
func (p *Provider) ImportParameters(ctx context.Context, keyID string) (kms.ImportParameters, error) {
	body := &model.GetParametersForImportRequestBody{KeyId: keyID,
		WrappingAlgorithm: model.GetGetParametersForImportRequestBodyWrappingAlgorithmEnum().RSAES_OAEP_SHA_256}
	var resp *model.CreateParametersForImportResponse
	err := send(ctx, func() (err error) {
		resp, err = p.kms().CreateParametersForImport(&model.CreateParametersForImportRequest{Body: body})
		return err
	})
	if err != nil {
		return kms.ImportParameters{}, p.importError(ctx, err, "get import parameters for", keyID)
	}
	public, err := base64.StdEncoding.DecodeString(deref(resp.PublicKey))
	if err != nil {
		return kms.ImportParameters{}, fmt.Errorf("import parameters of key %s: public_key is not base64: %w", keyID, err)
	}
	var expires time.Time
	if resp.ExpirationTime != nil {
		expires = time.Unix(*resp.ExpirationTime, 0).UTC()
	}
	return kms.ImportParameters{PublicKey: public, ImportToken: deref(resp.ImportToken), ExpiresAt: expires}, nil
}

// ImportMaterial imports wrapped material; expiration_time goes in seconds.
func (p *Provider) ImportMaterial(ctx context.Context, keyID, importToken string, wrapped []byte, expiresAt time.Time) error {
	body := &model.ImportKeyMaterialRequestBody{KeyId: keyID, ImportToken: importToken,
		EncryptedKeyMaterial: base64.StdEncoding.EncodeToString(wrapped)}
	if !expiresAt.IsZero() {
		s := expiresAt.Unix()
		body.ExpirationTime = &s
	}
	if err := send(ctx, func() error {
		_, err := p.kms().ImportKeyMaterial(&model.ImportKeyMaterialRequest{Body: body})
		return err
	}); err != nil {
		return p.importError(ctx, err, "import material into", keyID)
	}
	return nil
}

// importError classifies import refusals; a 400 the table does not name is about the request's
// material or token, which only the user can fix.
func (p *Provider) importError(ctx context.Context, err error, call, keyID string) error {
	state := kms.State("")
	if k, oerr := p.Observe(ctx, keyID); oerr == nil {
		state = k.State
	}
	classified := classify(err, call, keyID, state)
	if rej, ok := classified.(*kms.RejectedError); ok && call == "import material into" && errorCode(err) != codeNotExternal {
		return &kms.ImportError{Code: kms.ImportMaterialInvalid, Reason: rej.Reason}
	}
	return classified
}

// enum sets an SDK enum field from its string value.
func enum[T any](value string, field **T) error {
	v := new(T)
	raw, _ := json.Marshal(value)
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("value %q: %w", value, err)
	}
	*field = v
	return nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func ptr[T any](v T) *T { return &v }

func contains(states []kms.State, s kms.State) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}

// send makes one SDK call, which takes no context, so that the caller's context still bounds
// it: the caller returns when ctx ends, and the call itself ends within the request timeout.
// A call cut short this way may still be carried out by the KMS, as one that timed out: every
// call is idempotent or, for a create, found again by its tag or its recorded attempt.
func send(ctx context.Context, call func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- call() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
