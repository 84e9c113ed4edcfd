package controllers

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/keystatus"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// DefaultSyncPeriod is how often a settled key is looked at again, to catch changes made
// outside Kubernetes.
const DefaultSyncPeriod = 10 * time.Minute

// next is when to look at the key again after a reconcile with this outcome. What the user
// must fix is looked at again later (a refused import at the import retry, since its Secret is
// not watched; the rest on the slow resync, so drift and the deletion date are still seen);
// a lost race goes through the rate limiter; a KMS that refuses the operator as a whole is
// tried again when it may take calls, spread out so thousands of keys do not come back at
// once (per-key backoff would only add to it); what may pass is returned for a retry with
// backoff.
func (r *CustomerMasterKeyReconciler) next(cmk *v1alpha1.CustomerMasterKey, o outcome) (ctrl.Result, error) {
	f := o.failure
	switch {
	case f == nil && o.cut:
		return requeueRateLimited(), nil
	case f == nil:
		return r.requeue(o.decision), nil
	case f.Kind == keystatus.Blocking && f.Import:
		return ctrl.Result{RequeueAfter: r.ImportRetry}, nil
	case f.Kind == keystatus.Blocking:
		return r.resync(), nil
	case f.Kind == keystatus.Conflict:
		// Another writer of the KMS's record won; the next attempt starts from its state.
		return requeueRateLimited(), nil
	case f.Kind == keystatus.Unavailable:
		return ctrl.Result{RequeueAfter: wait.Jitter(max(f.RetryAfter, time.Second), 0.5)}, nil
	}
	err := f.Err
	if !cmk.DeletionTimestamp.IsZero() {
		err = fmt.Errorf("applying deletionPolicy: %w", err)
	}
	if cmk.Status.KeyID == "" {
		return ctrl.Result{}, fmt.Errorf("%s key for %s/%s: %w", f.Doing, cmk.Namespace, cmk.Name, err)
	}
	return ctrl.Result{}, fmt.Errorf("%s key %s: %w", f.Doing, cmk.Status.KeyID, err)
}

// requeue turns a settled decision into when to look at the key again: at the time the KMS
// changes the key by itself, else at the slow resync.
func (r *CustomerMasterKeyReconciler) requeue(d planner.Decision) ctrl.Result {
	resync := r.resync()
	if !d.RecheckAt.IsZero() {
		if until := d.RecheckAt.Sub(r.Clock.Now()); until < resync.RequeueAfter {
			return ctrl.Result{RequeueAfter: max(until, planner.OverdueRecheck)}
		}
	}
	return resync
}

// resync is the slow look for drift, jittered so thousands of keys do not come due together.
func (r *CustomerMasterKeyReconciler) resync() ctrl.Result {
	return ctrl.Result{RequeueAfter: wait.Jitter(r.SyncPeriod, 0.1)}
}

// requeueRateLimited asks for another reconcile through the controller's rate limiter (backoff
// per key under an overall rate), for a write that lost a race or a cache that lags behind the
// operator's own write. RequeueAfter would bypass it.
func requeueRateLimited() ctrl.Result {
	return ctrl.Result{Requeue: true} //nolint:staticcheck // The one way to use the rate limiter without an error.
}

// settle returns a result to the controller: conflicts requeue quietly, and a reconcile cut
// short by the manager stopping reports nothing, since the next start picks the key up.
func (r *CustomerMasterKeyReconciler) settle(ctx context.Context, result ctrl.Result, err error) (ctrl.Result, error) {
	switch {
	case ctx.Err() != nil:
		return ctrl.Result{}, nil
	case apierrors.IsConflict(err):
		return requeueRateLimited(), nil
	}
	return result, err
}
