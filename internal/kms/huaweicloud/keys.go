package huaweicloud

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// key_state codes of the API.
var states = map[string]kms.State{
	"1": kms.StateCreating,
	"2": kms.StateEnabled,
	"3": kms.StateDisabled,
	"4": kms.StatePendingDeletion,
	"5": kms.StatePendingImport,
	// 7, Frozen (the account in arrears), appears in responses (the SDK's KeyStatusInfo model;
	// docs/huaweicloud.md); it is not a phase of the API but a FrozenError: nothing can be done
	// to such a key.
	"7": kms.StateFrozen,
}

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
			// one made in the console (docs/huaweicloud.md: never claim a key by alias alone).
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

func contains(states []kms.State, s kms.State) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}
