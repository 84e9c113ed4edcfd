package huaweicloud

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

var (
	_ kms.Rotator = (*Provider)(nil)
	_ kms.Tagger  = (*Provider)(nil)
)

// Rotation error codes (Huawei KMS API reference, error codes; the Open Telekom Cloud copy of
// the same table lists all of them).
const (
	codeExternalNoRotation   = "KMS.0312" // imported material cannot rotate
	codeRotationNotEnabled   = "KMS.0313" // rotation is off (interval update, disable)
	codeRSANoRotation        = "KMS.0324"
	codeAsymmetricNoRotation = "KMS.0325"
	codeKeystoreNoRotation   = "KMS.0338"
	codeRotationNotDisabled  = "KMS.2901" // enable-key-rotation while rotation is on
	codeRotationInterval     = "KMS.3001" // rotation_interval outside 30-365
	codeKeyDisabled          = "KMS.0209"
	codeKeyPendingDeletion   = "KMS.0210"
)

// Rotation reads the key's rotation: POST /v1.0/{project_id}/kms/get-key-rotation-status
// (SDK ShowKeyRotationStatus), which answers key_rotation_enabled, rotation_interval,
// last_rotation_time and number_of_rotations.
func (p *Provider) Rotation(ctx context.Context, keyID string) (kms.Rotation, error) {
	var resp *model.ShowKeyRotationStatusResponse
	err := send(ctx, func() (err error) {
		resp, err = p.kms().ShowKeyRotationStatus(&model.ShowKeyRotationStatusRequest{Body: &model.OperateKeyRequestBody{KeyId: keyID}})
		return err
	})
	if err != nil {
		return kms.Rotation{}, p.rotationError(err, "read the rotation of", keyID)
	}
	out := kms.Rotation{LastRotation: epoch(deref(resp.LastRotationTime))}
	if resp.KeyRotationEnabled != nil {
		out.Enabled = *resp.KeyRotationEnabled
	}
	if resp.RotationInterval != nil {
		out.IntervalDays = int(*resp.RotationInterval)
	}
	if resp.NumberOfRotations != nil {
		out.Rotations = int(*resp.NumberOfRotations)
	}
	return out, nil
}

// SetRotation turns rotation on with an interval, or off. Huawei refuses to enable a rotation
// that is already on (KMS.2901, "The rotation state of key is not disabled": Open Telekom
// Cloud's Terraform provider, PR 1823, met it on a key whose deletion was canceled, since the
// KMS keeps rotation through a pending deletion and restores it after the cancel), so the
// status is read first and only what differs is called: enable-key-rotation, then
// update-key-rotation-interval (the interval can only change while rotation is on, KMS.0313);
// or disable-key-rotation.
func (p *Provider) SetRotation(ctx context.Context, keyID string, enabled bool, intervalDays int) error {
	if enabled && (intervalDays < kms.MinRotationDays || intervalDays > kms.MaxRotationDays) {
		return &kms.RejectedError{Reason: fmt.Sprintf("the rotation interval must be %d to %d days, not %d",
			kms.MinRotationDays, kms.MaxRotationDays, intervalDays)}
	}
	current, err := p.Rotation(ctx, keyID)
	if err != nil {
		return err
	}
	body := &model.OperateKeyRequestBody{KeyId: keyID}
	switch {
	case !enabled && current.Enabled:
		err = send(ctx, func() error {
			_, err := p.kms().DisableKeyRotation(&model.DisableKeyRotationRequest{Body: body})
			return err
		})
		if errorCode(err) == codeRotationNotEnabled {
			err = nil // turned off meanwhile
		}
		return p.rotationError(err, "turn off rotation of", keyID)
	case !enabled:
		return nil
	case !current.Enabled:
		err = send(ctx, func() error {
			_, err := p.kms().EnableKeyRotation(&model.EnableKeyRotationRequest{Body: body})
			return err
		})
		if errorCode(err) == codeRotationNotDisabled {
			err = nil // turned on meanwhile
		}
		if err != nil {
			return p.rotationError(err, "turn on rotation of", keyID)
		}
	}
	if current.Enabled && current.IntervalDays == intervalDays {
		return nil
	}
	err = send(ctx, func() error {
		_, err := p.kms().UpdateKeyRotationInterval(&model.UpdateKeyRotationIntervalRequest{
			Body: &model.UpdateKeyRotationIntervalRequestBody{KeyId: keyID, RotationInterval: int32(intervalDays)}})
		return err
	})
	return p.rotationError(err, "set the rotation interval of", keyID)
}

// rotationError classifies the refusals of the rotation calls: a key that cannot rotate is
// unsupported, one not Enabled a state error (KMS.0209, KMS.0210: the console guide makes an
// enabled key the condition for changing rotation).
func (p *Provider) rotationError(err error, call, keyID string) error {
	if err == nil {
		return nil
	}
	switch errorCode(err) {
	case codeExternalNoRotation, codeRSANoRotation, codeAsymmetricNoRotation, codeKeystoreNoRotation, codeDefaultKey:
		return &kms.UnsupportedError{Reason: fmt.Sprintf("key %s cannot rotate (%s): only symmetric keys (AES_256, SM4) "+
			"with origin KMS do; remove spec.rotation", keyID, errorCode(err))}
	case codeKeyDisabled:
		return &kms.StateError{KeyID: keyID, Call: call, State: kms.StateDisabled}
	case codeKeyPendingDeletion:
		return &kms.StateError{KeyID: keyID, Call: call, State: kms.StatePendingDeletion}
	case codeRotationInterval:
		return &kms.RejectedError{Reason: fmt.Sprintf("%s key %s: the KMS refuses the interval (%s)", call, keyID, codeRotationInterval)}
	}
	return classify(err, call, keyID, "")
}

// epoch reads a time Huawei gives as a decimal string. Its reference calls last_rotation_time
// seconds since 1970, but its example has 13 digits, which is milliseconds (and another
// client library calls it microseconds); so the unit is judged by size. 1e11 seconds is the
// year 5138 and 1e11 milliseconds is 1973: neither is a time this operator meets.
func epoch(s string) time.Time {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	switch {
	case err != nil || n <= 0:
		return time.Time{}
	case n >= 1e14: // microseconds
		return time.UnixMicro(n).UTC()
	case n >= 1e11: // milliseconds
		return time.UnixMilli(n).UTC()
	}
	return time.Unix(n, 0).UTC()
}

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
			"own (its owner): spec.tags can hold at most %d here", maxTags, own, keyID, maxTags-own)}
	}
	return p.retag(ctx, keyID, remove, add)
}
