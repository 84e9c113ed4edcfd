package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// setObserved records a successful reconcile: the key's real state, Ready as the planner
// reads it, and Synced=True for this generation.
func (r *CustomerMasterKeyReconciler) setObserved(cmk *v1alpha1.CustomerMasterKey, key *kms.Key) {
	st := &cmk.Status
	switch {
	case key != nil:
		st.Phase = v1alpha1.Phase(key.State)
	case st.KeyID != "":
		// The KMS no longer knows the key: deleted, for every purpose a user has.
		st.Phase = v1alpha1.PhaseDeleted
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
	ready := planner.Ready(cmk.Spec, st.KeyID, key)
	r.setCondition(cmk, v1alpha1.ConditionReady, ready.Ready, ready.Reason, ready.Message)
	r.setCondition(cmk, v1alpha1.ConditionSynced, true, v1alpha1.ReasonReconcileSuccess, "The last reconcile reached the KMS without error")
	st.ObservedGeneration = cmk.Generation
}

// setTerminal records a failure retrying cannot fix. The status describes this generation, so
// nothing is retried until the spec changes.
func (r *CustomerMasterKeyReconciler) setTerminal(cmk *v1alpha1.CustomerMasterKey, err error) {
	reason := v1alpha1.ReasonRejected
	if kms.IsUnsupported(err) {
		reason = v1alpha1.ReasonUnsupported
	}
	r.setCondition(cmk, v1alpha1.ConditionReady, false, reason, err.Error())
	r.setCondition(cmk, v1alpha1.ConditionSynced, false, reason, err.Error())
	cmk.Status.ObservedGeneration = cmk.Generation
	r.event(cmk, "Warning", reason, "Reconcile", "%s", err.Error())
}

// setBlocked records something only the user can fix (an import refused, an adopted key that
// does not exist or does not match): both conditions False with what to do. The Warning event
// is sent only when the message changes, so periodic retries do not flood the event stream.
func (r *CustomerMasterKeyReconciler) setBlocked(cmk *v1alpha1.CustomerMasterKey, eventReason, reason, msg string) {
	if c := condition(cmk, v1alpha1.ConditionSynced); c == nil || c.Message != msg {
		r.event(cmk, "Warning", eventReason, "Reconcile", "%s", msg)
	}
	r.setCondition(cmk, v1alpha1.ConditionReady, false, reason, msg)
	r.setCondition(cmk, v1alpha1.ConditionSynced, false, reason, msg)
	cmk.Status.ObservedGeneration = cmk.Generation
}

// failed records a transient failure, which the caller returns for a rate-limited retry.
func (r *CustomerMasterKeyReconciler) failed(cmk *v1alpha1.CustomerMasterKey, doing string, err error) error {
	msg := fmt.Sprintf("%s key failed, retrying with backoff: %v", doing, err)
	r.setCondition(cmk, v1alpha1.ConditionSynced, false, v1alpha1.ReasonReconcileError, msg)
	r.event(cmk, "Warning", v1alpha1.EventFailed, doing, "%s", msg)
	if cmk.Status.KeyID == "" {
		return fmt.Errorf("%s key for %s/%s: %w", doing, cmk.Namespace, cmk.Name, err)
	}
	return fmt.Errorf("%s key %s: %w", doing, cmk.Status.KeyID, err)
}

func condition(cmk *v1alpha1.CustomerMasterKey, typ string) *metav1.Condition {
	return meta.FindStatusCondition(cmk.Status.Conditions, typ)
}

func (r *CustomerMasterKeyReconciler) setCondition(cmk *v1alpha1.CustomerMasterKey, typ string, ok bool, reason, msg string) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&cmk.Status.Conditions, metav1.Condition{
		Type:               typ,
		Status:             status,
		Reason:             reason,
		Message:            msg,
		ObservedGeneration: cmk.Generation,
		LastTransitionTime: metav1.NewTime(r.Clock.Now()),
	})
}

// patchStatus writes status once, as a merge patch carrying the resourceVersion read, and only
// when it changed: a reconcile that finds nothing new writes nothing.
func (r *CustomerMasterKeyReconciler) patchStatus(ctx context.Context, before, after *v1alpha1.CustomerMasterKey) error {
	if equality.Semantic.DeepEqual(before.Status, after.Status) {
		return nil
	}
	patch := client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})
	if err := r.Status().Patch(ctx, after, patch); err != nil {
		return fmt.Errorf("writing status: %w", err)
	}
	return nil
}
