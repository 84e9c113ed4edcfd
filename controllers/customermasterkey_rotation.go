package controllers

import (
	"context"
	"fmt"
	"maps"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// withExtras adds to the key what the spec or status asks about beyond its state: its rotation
// and its tags. Each is one more call to a cloud KMS, so each is read only when asked about:
// rotation while spec.rotation or status.rotation is set, tags while spec.tags or status.tags
// holds any (so tags removed from the spec are removed from the key, and then no longer read).
// When a read fails, the key is returned without what failed, with the error.
func (r *CustomerMasterKeyReconciler) withExtras(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, key *kms.Key) (*kms.Key, error) {
	if key == nil || key.State == kms.StateDeleted {
		return key, nil
	}
	out := *key
	// An observed key reports both whatever the spec says (status follows the KMS), and is
	// what it is: its own spec and origin say whether it can rotate.
	observing := cmk.Spec.ManagementPolicy == v1alpha1.ManagementPolicyObserve
	keySpec, origin := string(cmk.Spec.KeySpec), string(cmk.Spec.Origin)
	if observing {
		keySpec, origin = key.KeySpec, key.Origin
	}
	rotator, ok := kms.As[kms.Rotator](r.KMS)
	if ok && (cmk.Spec.Rotation != nil || cmk.Status.Rotation != nil || observing) && kms.CanRotate(keySpec, origin) {
		rotation, err := rotator.Rotation(ctx, key.ID)
		if err != nil {
			return key, fmt.Errorf("reading the rotation of key %s: %w", key.ID, err)
		}
		out.Rotation = &rotation
	}
	tagger, ok := kms.As[kms.Tagger](r.KMS)
	if ok && (len(cmk.Spec.Tags) > 0 || len(cmk.Status.Tags) > 0 || observing) {
		tags, err := tagger.Tags(ctx, key.ID)
		if err != nil {
			out.Rotation = nil // the state's calls go on; rotation waits with the tags
			return &out, fmt.Errorf("reading the tags of key %s: %w", key.ID, err)
		}
		if tags == nil {
			tags = map[string]string{}
		}
		out.Tags = tags
	}
	return &out, nil
}

// extrasAfter gives the key read back after an action its rotation and tags: read again after
// a create or a change of them, carried over from before any other action, which leaves them as
// they were (Huawei keeps rotation through a scheduled deletion and its cancel: "About Key
// Rotation"; tags too: Open Telekom Cloud Terraform provider, issue 2802). A state change of a
// key with rotation or tags thus costs no more calls than one without.
func (r *CustomerMasterKeyReconciler) extrasAfter(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, before, after *kms.Key, action planner.Action) (*kms.Key, error) {
	if before == nil || after == nil || action == planner.Create || action == planner.SetRotation || action == planner.SetTags {
		return r.withExtras(ctx, cmk, after)
	}
	out := *after
	out.Rotation, out.Tags = before.Rotation, before.Tags
	return &out, nil
}

// setRotation turns the key's rotation on or off, or changes its interval, as the spec asks.
func (r *CustomerMasterKeyReconciler) setRotation(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string) error {
	rotator, ok := kms.As[kms.Rotator](r.KMS)
	if !ok {
		return &kms.UnsupportedError{Reason: unsupportedRotation}
	}
	enabled, days := planner.WantRotation(cmk.Spec)
	if err := rotator.SetRotation(ctx, id, enabled, days); err != nil {
		return err
	}
	if enabled {
		r.event(cmk, "Normal", v1alpha1.EventRotationEnabled, "SetKeyRotation", "Key %s rotates every %d days", id, days)
	} else {
		r.event(cmk, "Normal", v1alpha1.EventRotationDisabled, "SetKeyRotation", "Turned off rotation of key %s", id)
	}
	return nil
}

// setTags makes the key's tags those of the spec.
func (r *CustomerMasterKeyReconciler) setTags(ctx context.Context, cmk *v1alpha1.CustomerMasterKey, id string) error {
	tagger, ok := kms.As[kms.Tagger](r.KMS)
	if !ok {
		return &kms.UnsupportedError{Reason: unsupportedTags}
	}
	tags := planner.SpecTags(cmk.Spec)
	if err := tagger.SetTags(ctx, id, tags); err != nil {
		return err
	}
	r.event(cmk, "Normal", v1alpha1.EventTagsChanged, "SetKeyTags", "Key %s has %d tags, as spec.tags asks", id, len(tags))
	return nil
}

const (
	unsupportedRotation = "The KMS provider cannot rotate keys: remove spec.rotation, or run the operator with a provider that can (embedded, huaweicloud)"
	unsupportedTags     = "The KMS provider cannot tag keys: remove spec.tags, or run the operator with a provider that can (embedded, huaweicloud)"
)

// unsupported says what the spec asks that the provider cannot do; empty when nothing.
func (r *CustomerMasterKeyReconciler) unsupported(cmk *v1alpha1.CustomerMasterKey) string {
	if _, ok := kms.As[kms.Rotator](r.KMS); !ok && cmk.Spec.Rotation != nil && cmk.Spec.Rotation.Enabled {
		return unsupportedRotation
	}
	if _, ok := kms.As[kms.Tagger](r.KMS); !ok && len(cmk.Spec.Tags) > 0 {
		return unsupportedTags
	}
	return ""
}

// reportExtrasDrift sends a DriftDetected event when the key's rotation or tags changed outside
// Kubernetes since status recorded them, while the spec stayed the same: the reconcile puts
// them back.
func (r *CustomerMasterKeyReconciler) reportExtrasDrift(cmk *v1alpha1.CustomerMasterKey, key *kms.Key) {
	if key == nil || cmk.Generation != cmk.Status.ObservedGeneration {
		return
	}
	if was := cmk.Status.Rotation; was != nil && key.Rotation != nil && planner.Rotates(cmk.Spec, key) &&
		(was.Enabled != key.Rotation.Enabled || int(was.IntervalDays) != key.Rotation.IntervalDays) {
		r.event(cmk, "Warning", v1alpha1.EventDriftDetected, "Observe",
			"Rotation of key %s was changed outside Kubernetes; putting back what spec.rotation asks", key.ID)
	}
	if was := cmk.Status.Tags; key.Tags != nil && !maps.Equal(was, key.Tags) && planner.Retags(cmk.Spec, key) {
		r.event(cmk, "Warning", v1alpha1.EventDriftDetected, "Observe",
			"Tags of key %s were changed outside Kubernetes; putting back those of spec.tags", key.ID)
	}
}
