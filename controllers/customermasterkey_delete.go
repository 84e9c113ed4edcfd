package controllers

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/keystatus"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// finalize applies deletionPolicy to the key of a resource being deleted; release reports that
// the resource may go at once: a key scheduled for deletion does not hold its resource for the
// window. The key is found as in a normal reconcile, by status or by the creation token, so a
// resource deleted while its key was being created does not leave the key behind unnoticed;
// and the last spec's word on the deletion (a cancel, a new window) is carried out first.
func (r *CustomerMasterKeyReconciler) finalize(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (o outcome, release bool) {
	key, err := r.ownKey(ctx, cmk)
	if err != nil {
		return failed(nil, "Observing", err), false
	}
	if key != nil && key.State != kms.StateDeleted {
		err := r.verifyOwner(ctx, cmk, key.ID)
		var notYours *keystatus.Blocked
		switch {
		case errors.As(err, &notYours):
			// Another resource's key: this one goes without doing anything to it.
			r.event(cmk, "Normal", v1alpha1.EventRetained, "RetainKey",
				"Left key %s alone: the KMS records it as another resource's, so deletionPolicy does not apply to it", key.ID)
			return outcome{}, true
		case err != nil:
			return failed(nil, "Observing", err), false
		}
	}
	o, _ = r.drive(ctx, cmk, key)
	if o.failure != nil || o.cut || o.decision.Action != planner.Release {
		return o, false
	}
	if k := o.key; k != nil && k.State != kms.StateDeleted && k.State != kms.StatePendingDeletion {
		r.event(cmk, "Normal", v1alpha1.EventRetained, "RetainKey",
			"Left key %s in the KMS (%s), as deletionPolicy Retain asks", k.ID, k.State)
	}
	return o, true
}

// release takes the finalizer off, letting the resource go.
func (r *CustomerMasterKeyReconciler) release(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	patch := client.MergeFromWithOptions(cmk.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(cmk, Finalizer)
	if err := r.Patch(ctx, cmk, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing finalizer: %w", err)
	}
	return nil
}
