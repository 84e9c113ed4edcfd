package huaweicloud

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

var _ kms.Rotator = (*Provider)(nil)

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
