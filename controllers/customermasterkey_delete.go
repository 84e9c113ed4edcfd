package controllers

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

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
	if cmk.Spec.ManagementPolicy == v1alpha1.ManagementPolicyObserve {
		if err := r.retainObserved(ctx, cmk); err != nil {
			return failed(nil, "Recording the deletion policy of", err), false
		}
		if id := cmk.Status.KeyID; id != "" {
			r.event(cmk, "Normal", v1alpha1.EventRetained, "RetainKey",
				"Left key %s as it is: managementPolicy Observe never changes it, whatever deletionPolicy says", id)
		}
		return outcome{}, true
	}
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
		r.countUsage(ctx, cmk)
		// Recorded before the resource goes: Retain lets it go with its key recorded as retained.
		if err := r.keepPolicy(ctx, cmk, key); err != nil {
			return failed(key, "Recording the deletion policy of", err), false
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
		// cmk is as stored again: the status written next must carry no other change.
		controllerutil.AddFinalizer(cmk, Finalizer)
		return fmt.Errorf("removing finalizer: %w", err)
	}
	return nil
}

// CRDName is the name of the CustomerMasterKey CRD, which the operator reads (and only that
// one) to tell an uninstall from the deletion of one resource.
const CRDName = "customermasterkeys.kms.cmk.io"

// +kubebuilder:rbac:groups=apiextensions.k8s.io,resources=customresourcedefinitions,resourceNames=customermasterkeys.kms.cmk.io,verbs=get

// crdTerminating reports whether the CustomerMasterKey CRD is being deleted (or is gone): then
// the apiserver is deleting every resource of the kind, an uninstall rather than a decision
// about one key. It is read afresh for every resource being deleted: a CRD deleted and created
// again must not be taken for the one before. A read that fails holds the deletion up (it is
// retried) rather than risk applying deletionPolicy to every key.
func (r *CustomerMasterKeyReconciler) crdTerminating(ctx context.Context) (bool, error) {
	crd, err := r.crd(ctx)
	if err != nil {
		return false, fmt.Errorf("reading CRD %s, to tell an uninstall from a deletion: %w", CRDName, err)
	}
	return crd == nil || !crd.DeletionTimestamp.IsZero(), nil
}

// uninstall lets a resource go without any KMS call while its CRD is being deleted: the key
// stays as it is, Enabled or not, whatever deletionPolicy says, and the log says so for each.
func (r *CustomerMasterKeyReconciler) uninstall(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	if err := r.release(ctx, cmk); err != nil {
		return err
	}
	r.writes.forget(cmk.UID)
	r.owned.Delete(cmk.UID)
	r.recorded.Delete(cmk.UID)
	log.FromContext(ctx).Info("The CustomerMasterKey CRD is being deleted: the key is kept as it is, whatever deletionPolicy says",
		"keyID", cmk.Status.KeyID, "phase", cmk.Status.Phase, "deletionPolicy", cmk.Spec.DeletionPolicy)
	return nil
}
