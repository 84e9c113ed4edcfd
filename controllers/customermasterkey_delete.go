package controllers

import (
	"context"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// finalize applies deletionPolicy to the key of a resource being deleted, then lets the
// resource go at once: a key scheduled for deletion does not hold its resource for the window.
func (r *CustomerMasterKeyReconciler) finalize(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(cmk, Finalizer) {
		return ctrl.Result{}, nil
	}
	key, err := r.observe(ctx, cmk.Status.KeyID)
	if err != nil {
		return ctrl.Result{}, r.finalizeFailed(cmk, "Observing", err)
	}
	decision := planner.Next(r.input(cmk, key))
	switch decision.Action {
	case planner.ScheduleDeletion:
		if err := r.KMS.ScheduleDeletion(ctx, key.ID, int(cmk.Spec.PendingDays)); err != nil {
			return ctrl.Result{}, r.finalizeFailed(cmk, "ScheduleDeletion", err)
		}
		r.event(cmk, "Normal", v1alpha1.EventDeletionScheduled, "ScheduleKeyDeletion",
			"Scheduled deletion of key %s in %d days, as deletionPolicy Delete asks", key.ID, cmk.Spec.PendingDays)
		if key, err = r.readBack(ctx, key.ID); err != nil {
			return ctrl.Result{}, r.finalizeFailed(cmk, "Observing", err)
		}
		if decision = planner.Next(r.input(cmk, key)); decision.Action != planner.Release {
			return r.requeue(decision), nil
		}
	case planner.Release:
		if key != nil && cmk.Spec.DeletionPolicy == v1alpha1.DeletionPolicyRetain &&
			key.State != kms.StateDeleted && key.State != kms.StatePendingDeletion {
			r.event(cmk, "Normal", v1alpha1.EventRetained, "RetainKey",
				"Left key %s in the KMS (%s), as deletionPolicy Retain asks", key.ID, key.State)
		}
	default:
		return r.requeue(decision), nil
	}

	patch := client.MergeFromWithOptions(cmk.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(cmk, Finalizer)
	if err := r.Patch(ctx, cmk, patch); err != nil {
		return quietOnConflict(client.IgnoreNotFound(err))
	}
	return ctrl.Result{}, nil
}

// finalizeFailed reports a failure while deleting: an event only, since the resource is going.
func (r *CustomerMasterKeyReconciler) finalizeFailed(cmk *v1alpha1.CustomerMasterKey, doing string, err error) error {
	if kms.IsTerminal(err) {
		r.event(cmk, "Warning", v1alpha1.EventFailed, doing, "Applying deletionPolicy failed: %v; remove the finalizer %s by hand to let the resource go", err, Finalizer)
	} else {
		r.event(cmk, "Warning", v1alpha1.EventFailed, doing, "Applying deletionPolicy failed, retrying with backoff: %v", err)
	}
	return fmt.Errorf("applying deletionPolicy to key %s: %w", cmk.Status.KeyID, err)
}
