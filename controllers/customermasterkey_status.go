package controllers

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// recordKey records what the KMS reports about the key: its phase, deletion date and window,
// material expiry. A nil key with an ID in status is a key the KMS no longer has.
func (r *CustomerMasterKeyReconciler) recordKey(cmk *v1alpha1.CustomerMasterKey, key *kms.Key) {
	st := &cmk.Status
	in := r.input(cmk, key) // before the phase changes: the window verdict reads the last one
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
	case st.PendingDays == 0 && cmk.Spec.DeletionScheduled && planner.Window(in) == planner.Accept:
		st.PendingDays = cmk.Spec.PendingDays
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
	recordExtras(st, cmk.Spec, key)
}

// setObserved records a successful reconcile: the key's real state, Ready as the planner
// reads it, and Synced=True for this generation.
func (r *CustomerMasterKeyReconciler) setObserved(cmk *v1alpha1.CustomerMasterKey, key *kms.Key) {
	r.recordKey(cmk, key)
	ready := planner.Ready(r.input(cmk, key))
	r.setCondition(cmk, v1alpha1.ConditionReady, ready.Ready, ready.Reason, ready.Message)
	r.setCondition(cmk, v1alpha1.ConditionSynced, true, v1alpha1.ReasonReconcileSuccess, "The last reconcile reached the KMS without error")
	cmk.Status.ObservedGeneration = cmk.Generation
}

// setBlocked records something only a person can fix (an import refused, a key to adopt that
// does not exist or match, a spec the KMS refuses, a damaged key record): both conditions
// False with what to do. The status describes this generation; the key is looked at again
// later, and warnOnNewFailure sends one Warning per new message.
func (r *CustomerMasterKeyReconciler) setBlocked(cmk *v1alpha1.CustomerMasterKey, reason, msg string) {
	r.setCondition(cmk, v1alpha1.ConditionReady, false, reason, msg)
	r.setCondition(cmk, v1alpha1.ConditionSynced, false, reason, msg)
	cmk.Status.ObservedGeneration = cmk.Generation
}

// failed records a transient failure, which the caller returns for a rate-limited retry.
func (r *CustomerMasterKeyReconciler) failed(cmk *v1alpha1.CustomerMasterKey, doing string, err error) error {
	msg := fmt.Sprintf("%s key failed, retrying with backoff: %v", doing, err)
	r.setCondition(cmk, v1alpha1.ConditionSynced, false, v1alpha1.ReasonReconcileError, msg)
	if cmk.Status.KeyID == "" {
		return fmt.Errorf("%s key for %s/%s: %w", doing, cmk.Namespace, cmk.Name, err)
	}
	return fmt.Errorf("%s key %s: %w", doing, cmk.Status.KeyID, err)
}

// terminalReason is the condition reason of a failure retrying cannot fix.
func terminalReason(err error) string {
	switch {
	case kms.IsUnsupported(err):
		return v1alpha1.ReasonUnsupported
	case kms.IsUnreadable(err):
		return v1alpha1.ReasonKeyUnreadable
	case kms.IsFrozen(err):
		return v1alpha1.ReasonKeyFrozen
	}
	return v1alpha1.ReasonRejected
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

// report writes status when it changed, sends a Warning for a failure not reported before,
// and tells the controller what to do next.
func (r *CustomerMasterKeyReconciler) report(ctx context.Context, before, cmk *v1alpha1.CustomerMasterKey, result ctrl.Result, syncErr error) (ctrl.Result, error) {
	if ctx.Err() != nil {
		// Stopping: the next start redoes the reconcile, but a key made in this one is
		// recorded now, on a context of its own, rather than left for Lookup to find.
		if before.Status.KeyID == "" && cmk.Status.KeyID != "" {
			last, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownWrite)
			defer cancel()
			_ = r.writeKeyFacts(last, before, cmk)
		}
		return r.settle(ctx, result, syncErr)
	}
	if err := r.writeStatus(ctx, before, cmk); err != nil {
		if apierrors.IsNotFound(err) && before.Status.KeyID == "" && cmk.Status.KeyID != "" {
			return r.settle(ctx, ctrl.Result{}, r.vanished(ctx, cmk))
		}
		if apierrors.IsConflict(err) || syncErr == nil {
			return r.settle(ctx, ctrl.Result{}, err)
		}
		return r.settle(ctx, ctrl.Result{}, fmt.Errorf("%w; and %w", syncErr, err))
	}
	r.warnOnNewFailure(before, cmk)
	return r.settle(ctx, result, syncErr)
}

// vanished applies deletionPolicy to the key a reconcile made for a resource that was gone by
// the time its status was written. Kubernetes can delete a resource whose finalizer was added
// while the deletion was under way (the deletion judged the version without it), so the
// finalizer never runs; without this the key would be left usable, owned by nothing, found by
// no one.
func (r *CustomerMasterKeyReconciler) vanished(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	id, log := cmk.Status.KeyID, ctrl.LoggerFrom(ctx)
	if cmk.Spec.DeletionPolicy != v1alpha1.DeletionPolicyDelete {
		log.Info("The resource was deleted while its key was made; deletionPolicy Retain keeps the key", "keyID", id)
		return nil
	}
	if err := r.KMS.ScheduleDeletion(ctx, id, int(cmk.Spec.PendingDays)); err != nil {
		return fmt.Errorf("scheduling the deletion of key %s, made for %s/%s which was deleted meanwhile: %w", id, cmk.Namespace, cmk.Name, err)
	}
	log.Info("The resource was deleted while its key was made; deletionPolicy Delete schedules its deletion",
		"keyID", id, "pendingDays", cmk.Spec.PendingDays)
	return nil
}

// shutdownWrite bounds the one status write a stopping manager still makes.
const shutdownWrite = 5 * time.Second

// writeStatus writes status once, as a merge patch carrying the resourceVersion read, and only
// when it changed: a reconcile that finds nothing new writes nothing. When the patch loses a
// race (the resource was edited or deleted meanwhile), what status says about the key in the
// KMS, above all its ID, is written again without the lock: those are facts of the KMS, not
// views of the spec, and losing the key ID would orphan the key. The conflict is still
// returned, so the next reconcile judges the newer spec.
func (r *CustomerMasterKeyReconciler) writeStatus(ctx context.Context, before, after *v1alpha1.CustomerMasterKey) error {
	if equality.Semantic.DeepEqual(before.Status, after.Status) {
		return nil
	}
	err := r.Status().Patch(ctx, after, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
	if err == nil {
		r.writes.wrote(after)
		return nil
	}
	if !apierrors.IsConflict(err) {
		return fmt.Errorf("writing status: %w", err)
	}
	if ferr := r.writeKeyFacts(ctx, before, after); ferr != nil {
		return fmt.Errorf("writing key %s to status after a conflict: %w", after.Status.KeyID, ferr)
	}
	return err
}

// writeKeyFacts writes, without the lock, the fields of after's status that record the key in
// the KMS (its ID, phase, dates, window, import parameters), over before.
func (r *CustomerMasterKeyReconciler) writeKeyFacts(ctx context.Context, before, after *v1alpha1.CustomerMasterKey) error {
	facts := before.DeepCopy()
	st, from := &facts.Status, &after.Status
	st.KeyID, st.Phase, st.DeletionDate, st.PendingDays = from.KeyID, from.Phase, from.DeletionDate, from.PendingDays
	st.ImportParameters, st.MaterialExpiresAt = from.ImportParameters, from.MaterialExpiresAt
	if equality.Semantic.DeepEqual(before.Status, facts.Status) {
		return nil
	}
	if err := r.Status().Patch(ctx, facts, client.MergeFrom(before)); err != nil {
		return err // not found too: the caller judges a key made for a resource that is gone
	}
	r.writes.wrote(facts)
	return nil
}

// warnOnNewFailure sends one Warning event when the reconcile ended in a failure status did not
// already report with the same reason and message: retries, resyncs and restarts do not repeat
// it, since the comparison is with the status stored in the apiserver.
func (r *CustomerMasterKeyReconciler) warnOnNewFailure(before, after *v1alpha1.CustomerMasterKey) {
	now := condition(after, v1alpha1.ConditionSynced)
	if now == nil || now.Status == metav1.ConditionTrue {
		return
	}
	if was := condition(before, v1alpha1.ConditionSynced); was != nil && was.Status == now.Status &&
		was.Reason == now.Reason && was.Message == now.Message {
		return
	}
	r.event(after, "Warning", warningReason(now.Reason), "Reconcile", "%s", now.Message)
}

// warningReason is the event reason for a Synced=False reason.
func warningReason(conditionReason string) string {
	switch conditionReason {
	case v1alpha1.ReasonReconcileError:
		return v1alpha1.EventFailed
	case v1alpha1.ReasonSecretNotFound, v1alpha1.ReasonImportTokenInvalid,
		v1alpha1.ReasonMaterialInvalid, v1alpha1.ReasonMaterialMismatch, v1alpha1.ReasonExpiryPassed:
		return v1alpha1.EventImportFailed
	}
	return conditionReason
}
