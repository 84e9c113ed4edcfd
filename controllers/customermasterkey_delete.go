package controllers

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// finalize applies deletionPolicy to the key of a resource being deleted, then lets the
// resource go at once: a key scheduled for deletion does not hold its resource for the window.
// The key is found as in a normal reconcile, by status or by the creation token, so a resource
// deleted while its key was being created does not leave the key behind unnoticed; and the
// last spec's word on the deletion (a cancel, a new window) is carried out first.
func (r *CustomerMasterKeyReconciler) finalize(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (ctrl.Result, bool, error) {
	key, err := r.ownKey(ctx, cmk)
	if err != nil {
		return r.finalizeFailed(cmk, "Observing", err)
	}
	if key != nil && key.State != kms.StateDeleted {
		err := r.verifyOwner(ctx, cmk, key.ID)
		var notYours *refusal
		switch {
		case errors.As(err, &notYours):
			// Another resource's key: this one goes without doing anything to it.
			r.event(cmk, "Normal", v1alpha1.EventRetained, "RetainKey",
				"Left key %s alone: the KMS records it as another resource's, so deletionPolicy does not apply to it", key.ID)
			return r.release(ctx, cmk)
		case err != nil:
			return r.finalizeFailed(cmk, "Observing", err)
		}
	}
	for actions := 0; ; actions++ {
		decision := planner.Next(r.input(cmk, key))
		if decision.Action == planner.Release {
			break
		}
		r.recordKey(cmk, key)
		switch {
		case decision.Action == planner.None:
			return r.requeue(decision), false, nil
		case actions == maxActions:
			return requeueRateLimited(), false, nil
		}
		after, err := r.act(ctx, cmk, key, decision.Action)
		if err != nil {
			return r.finalizeFailed(cmk, string(decision.Action), err)
		}
		key = after
	}
	if key != nil && key.State != kms.StateDeleted && key.State != kms.StatePendingDeletion {
		r.event(cmk, "Normal", v1alpha1.EventRetained, "RetainKey",
			"Left key %s in the KMS (%s), as deletionPolicy Retain asks", key.ID, key.State)
	}

	return r.release(ctx, cmk)
}

// release takes the finalizer off, letting the resource go.
func (r *CustomerMasterKeyReconciler) release(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (ctrl.Result, bool, error) {
	patch := client.MergeFromWithOptions(cmk.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(cmk, Finalizer)
	if err := r.Patch(ctx, cmk, patch); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, true, nil
		}
		controllerutil.AddFinalizer(cmk, Finalizer)
		return ctrl.Result{}, false, fmt.Errorf("removing finalizer: %w", err)
	}
	return ctrl.Result{}, true, nil
}

// finalizeFailed reports a failure while applying deletionPolicy in status (and so in one
// Warning event). What retrying cannot fix says how to let the resource go by hand.
func (r *CustomerMasterKeyReconciler) finalizeFailed(cmk *v1alpha1.CustomerMasterKey, doing string, err error) (ctrl.Result, bool, error) {
	switch {
	case kms.IsTerminal(err), kms.IsUnreadable(err), kms.IsFrozen(err):
		r.setBlocked(cmk, terminalReason(err), fmt.Sprintf(
			"Applying deletionPolicy failed: %v. Fix that, or let the resource go without applying deletionPolicy to its key: "+
				"kubectl patch cmk %s -n %s --type merge -p '{\"metadata\":{\"finalizers\":null}}'", err, cmk.Name, cmk.Namespace))
		return r.resync(), false, nil
	case apierrors.IsConflict(err):
		return requeueRateLimited(), false, nil
	case kms.AsUnavailable(err) != nil:
		return r.kmsUnavailable(cmk, kms.AsUnavailable(err)), false, nil
	}
	return ctrl.Result{}, false, r.failed(cmk, doing, fmt.Errorf("applying deletionPolicy: %w", err))
}
