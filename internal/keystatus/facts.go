package keystatus

import (
	"maps"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// Record writes into st what the KMS reports about the key: its phase, deletion date and
// window, material expiry, rotation and tags. in is the planner's view from before the record
// (the window verdict reads the phase last reported); a nil in.Key with a key ID in status is
// a key the KMS no longer has.
func Record(st *v1alpha1.CustomerMasterKeyStatus, in planner.Input) {
	key := in.Key
	switch {
	case key != nil:
		st.Phase = v1alpha1.Phase(key.State)
	case st.KeyID != "":
		// The KMS no longer knows the key: deleted, for every purpose a user has.
		st.Phase = v1alpha1.PhaseDeleted
	}
	switch {
	case key == nil || key.State != kms.StatePendingDeletion:
		st.PendingDays = 0
	case planner.Window(in) == planner.Reschedule:
		// The window recorded no longer vouches for the key's date (moved earlier outside,
		// say): recorded with it, that date would pass for one that follows the spec.
		st.PendingDays = 0
	case st.PendingDays == 0 && in.Spec.DeletionScheduled && planner.Window(in) == planner.Accept:
		st.PendingDays = in.Spec.PendingDays
	}
	st.DeletionDate = nil
	if key != nil && key.State == kms.StatePendingDeletion && !key.DeletionDate.IsZero() {
		st.DeletionDate = &metav1.Time{Time: key.DeletionDate}
	}
	st.MaterialExpiresAt = nil
	if key != nil && !key.MaterialExpiresAt.IsZero() {
		st.MaterialExpiresAt = &metav1.Time{Time: key.MaterialExpiresAt}
	}
	if st.Phase != v1alpha1.PhasePendingImport {
		// Parameters only mean something while the key waits for material.
		st.ImportParameters = nil
	}
	recordExtras(st, in.Spec, key)
}

// recordExtras records the key's rotation and tags, when they were read.
func recordExtras(st *v1alpha1.CustomerMasterKeyStatus, spec v1alpha1.CustomerMasterKeySpec, key *kms.Key) {
	if key == nil {
		return
	}
	if rot := key.Rotation; rot != nil {
		st.Rotation = &v1alpha1.RotationStatus{Enabled: rot.Enabled, IntervalDays: int32(rot.IntervalDays), Rotations: int32(rot.Rotations)}
		if !rot.LastRotation.IsZero() {
			// Whole seconds, as status keeps them: a finer time would differ from it on every read.
			st.Rotation.LastRotationTime = &metav1.Time{Time: rot.LastRotation.Truncate(time.Second)}
		}
		if spec.Rotation == nil && !rot.Enabled {
			st.Rotation = nil // nothing asks about it any more
		}
	}
	if key.Tags != nil {
		st.Tags = maps.Clone(key.Tags)
		if len(st.Tags) == 0 {
			st.Tags = nil
		}
	}
}
