package controllers

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/keystatus"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// report computes the status from what the reconcile observed and did, writes it when it
// changed, sends the events it calls for, and tells the controller what to do next.
func (r *CustomerMasterKeyReconciler) report(ctx context.Context, before, cmk *v1alpha1.CustomerMasterKey, o outcome) (ctrl.Result, error) {
	var news []keystatus.Event
	cmk.Status, news = keystatus.Compute(keystatus.Input{
		Planner: r.input(cmk, o.key), Name: cmk.Name, Namespace: cmk.Namespace, Generation: cmk.Generation,
		Before: before.Status, Status: cmk.Status, Failure: o.failure, Cut: o.cut, Paused: o.paused,
	})
	result, syncErr := r.next(cmk, o)
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
		if apierrors.IsConflict(err) {
			// The key's facts were written all the same (see writeStatus): what they say
			// happened to the key is told now, since the next status read already says it.
			r.emit(cmk, news, func(e keystatus.Event) bool { return e.Reason == v1alpha1.EventDeleted })
			return r.settle(ctx, ctrl.Result{}, err)
		}
		if syncErr == nil {
			return r.settle(ctx, ctrl.Result{}, err)
		}
		return r.settle(ctx, ctrl.Result{}, fmt.Errorf("%w; and %w", syncErr, err))
	}
	r.emit(cmk, news, func(keystatus.Event) bool { return true })
	return r.settle(ctx, result, syncErr)
}

// vanished applies deletionPolicy to the key a reconcile made for a resource that was gone by
// the time its status was written. Kubernetes can delete a resource whose finalizer was added
// while the deletion was under way (the deletion judged the version without it), so the
// finalizer never runs; without this the key would be left usable, owned by nothing, found by
// no one.
func (r *CustomerMasterKeyReconciler) vanished(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	id, log := cmk.Status.KeyID, ctrl.LoggerFrom(ctx)
	if policy, _ := orphanPolicy(cmk); policy != kms.PolicyDelete {
		log.Info("The resource was deleted while its key was made; the key is kept, as deletionPolicy Retain or deletionProtection asks", "keyID", id)
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
	r.writes.writingStatus(after)
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
	r.writes.writingStatus(facts)
	if err := r.Status().Patch(ctx, facts, client.MergeFrom(before)); err != nil {
		return err // not found too: the caller judges a key made for a resource that is gone
	}
	r.writes.wrote(facts)
	return nil
}
