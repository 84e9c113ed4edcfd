// Package controllers holds the CustomerMasterKey reconciler: it finds the resource's key in the
// KMS, asks the planner for the next action, takes it, reads the key back and writes status.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// Finalizer holds a resource until its deletionPolicy has been applied to its key.
const Finalizer = "kms.cmk.io/deletion-policy"

// DefaultSyncPeriod is how often a settled key is looked at again, to catch changes made
// outside Kubernetes.
const DefaultSyncPeriod = 10 * time.Minute

// maxActions bounds the KMS calls one reconcile makes. A spec change needs at most five in a
// row (cancel, schedule again; cancel, enable, rotation, tags; issue parameters, import, tags,
// disable; create, rotation, tags, disable); a provider
// that never reaches the state it reports is sent through the rate limiter instead.
const maxActions = 6

// CustomerMasterKeyReconciler drives a KMS toward each CustomerMasterKey's spec.
type CustomerMasterKeyReconciler struct {
	client.Client
	KMS      kms.Provider
	Recorder events.EventRecorder
	// APIReader reads what the operator does not cache (keyMaterial Secrets, Namespaces) and
	// what must not be stale (a key's owner) straight from the apiserver: the manager's API
	// reader. nil means the client.
	APIReader client.Reader
	// Clock is the time source; tests pass a fake one.
	Clock clock.PassiveClock
	// SyncPeriod is the slow resync of settled keys.
	SyncPeriod time.Duration
	// ImportRetry is how soon a refused import is tried again.
	ImportRetry time.Duration

	writes ownWrites
	// owned remembers, by resource UID, the key whose ownership verifyOwner confirmed.
	owned sync.Map
}

// +kubebuilder:rbac:groups=kms.cmk.io,resources=customermasterkeys,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=kms.cmk.io,resources=customermasterkeys/status,verbs=get;patch
// +kubebuilder:rbac:groups=kms.cmk.io,resources=customermasterkeys/finalizers,verbs=update
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// Reconcile brings one key closer to its spec.
func (r *CustomerMasterKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	cmk := &v1alpha1.CustomerMasterKey{}
	if err := r.Get(ctx, req.NamespacedName, cmk); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.writes.behind(cmk) {
		return requeueRateLimited(), nil
	}
	if !cmk.DeletionTimestamp.IsZero() {
		if !controllerutil.ContainsFinalizer(cmk, Finalizer) {
			return ctrl.Result{}, nil
		}
		before := cmk.DeepCopy()
		result, released, err := r.finalize(ctx, cmk)
		if released {
			r.writes.forget(cmk.UID)
			r.owned.Delete(cmk.UID)
			return r.settle(ctx, result, err)
		}
		return r.report(ctx, before, cmk, result, err)
	}
	if err := r.ensureMetadata(ctx, cmk); err != nil {
		// Not found: deleted before it ever had the finalizer, so before any key was made.
		return r.settle(ctx, ctrl.Result{}, client.IgnoreNotFound(err))
	}
	before := cmk.DeepCopy()
	result, err := r.sync(ctx, cmk)
	return r.report(ctx, before, cmk, result, err)
}

// sync finds the key, takes the planner's actions and records the outcome in cmk.Status.
// Errors it returns are transient; the rest are reported in status.
func (r *CustomerMasterKeyReconciler) sync(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (ctrl.Result, error) {
	key, err := r.findKey(ctx, cmk)
	if err != nil {
		return r.actFailed(cmk, nil, "Observing", err)
	}
	if msg := mismatch(cmk, key); msg != "" {
		r.recordKey(cmk, key)
		r.setBlocked(cmk, v1alpha1.ReasonSpecMismatch, msg)
		return r.resync(), nil
	}
	// A failed read of rotation or tags holds up only rotation and tags: the key's state (a
	// deletion to cancel, say) still follows the spec, and the failure is reported after.
	key, extrasErr := r.withExtras(ctx, cmk, key)
	r.reportExtrasDrift(cmk, key)
	lastPhase := cmk.Status.Phase
	decision := planner.Next(r.input(cmk, key))
	if planner.Drift(lastPhase, cmk.Generation != cmk.Status.ObservedGeneration, key, decision) {
		r.event(cmk, "Warning", v1alpha1.EventDriftDetected, "Observe",
			"Key %s is %s outside Kubernetes (status said %s); returning it to the spec: %s", key.ID, key.State, lastPhase, decision.Action)
	}
	for actions := 0; decision.Action != planner.None; actions++ {
		if actions == maxActions {
			r.recordKey(cmk, key)
			return requeueRateLimited(), nil
		}
		log.FromContext(ctx).Info("Acting on key", "action", decision.Action, "keyID", cmk.Status.KeyID)
		after, err := r.act(ctx, cmk, key, decision.Action)
		if err == nil {
			var readErr error
			if after, readErr = r.extrasAfter(ctx, cmk, key, after, decision.Action); readErr != nil {
				extrasErr = readErr
			}
		}
		if err != nil {
			return r.actFailed(cmk, key, string(decision.Action), err)
		}
		key = after
		r.recordKey(cmk, key) // the next decision starts from what the KMS now reports
		decision = planner.Next(r.input(cmk, key))
	}
	if extrasErr != nil {
		return r.actFailed(cmk, key, "Reading rotation and tags of", extrasErr)
	}
	if msg := r.unsupported(cmk); msg != "" {
		r.recordKey(cmk, key)
		r.setBlocked(cmk, v1alpha1.ReasonUnsupported, msg)
		return r.resync(), nil
	}
	r.setObserved(cmk, key)
	r.reportDeletion(cmk, lastPhase)
	return r.requeue(decision), nil
}

// actFailed records a failed observation or call. What the user must fix (a refused import,
// a refusal of the KMS, a damaged key record) is reported and looked at again later; what may
// pass is returned for a retry with backoff. key is the key as last read, so status shows the
// state the calls before the failure left it in; nil when the key could not be read at all,
// and then status keeps what it knew: a failed read says nothing about the key.
func (r *CustomerMasterKeyReconciler) actFailed(cmk *v1alpha1.CustomerMasterKey, key *kms.Key, doing string, err error) (ctrl.Result, error) {
	if key != nil {
		r.recordKey(cmk, key)
	}
	var refused *importFailure
	var notYours *refusal
	switch {
	case errors.As(err, &refused):
		r.setBlocked(cmk, refused.reason, refused.message)
		return ctrl.Result{RequeueAfter: r.ImportRetry}, nil
	case errors.As(err, &notYours):
		r.setBlocked(cmk, notYours.reason, notYours.message)
		return r.resync(), nil
	case kms.IsTerminal(err), kms.IsUnreadable(err), kms.IsFrozen(err):
		// Still looked at on the slow resync, so drift and the deletion date are seen.
		r.setBlocked(cmk, terminalReason(err), err.Error())
		return r.resync(), nil
	case apierrors.IsConflict(err):
		// Another writer of the KMS's record won; the next attempt starts from its state.
		return requeueRateLimited(), nil
	case kms.AsUnavailable(err) != nil:
		return r.kmsUnavailable(cmk, kms.AsUnavailable(err)), nil
	}
	// A lost claim (another resource took the key first, or a KMS whose tags did not keep
	// this claim) is retried with backoff like any failure, and shown: the next attempt judges
	// the new owner.
	return ctrl.Result{}, r.failed(cmk, doing, err)
}

// kmsUnavailable reports a KMS that refuses the operator as a whole: Synced says what to fix,
// and the key is looked at again when the KMS may take calls again, spread out so thousands of
// keys do not come back at once. Not a per-key error: per-key backoff would only add to it.
func (r *CustomerMasterKeyReconciler) kmsUnavailable(cmk *v1alpha1.CustomerMasterKey, u *kms.UnavailableError) ctrl.Result {
	r.setCondition(cmk, v1alpha1.ConditionSynced, false, v1alpha1.ReasonKMSUnavailable, u.Reason)
	return ctrl.Result{RequeueAfter: wait.Jitter(max(u.RetryAfter, time.Second), 0.5)}
}

// reportDeletion records the moment a key is found deleted: expected at the end of a scheduled
// deletion, a warning when the key vanished from any other state.
func (r *CustomerMasterKeyReconciler) reportDeletion(cmk *v1alpha1.CustomerMasterKey, lastPhase v1alpha1.Phase) {
	if lastPhase == "" || lastPhase == v1alpha1.PhaseDeleted || cmk.Status.Phase != v1alpha1.PhaseDeleted {
		return
	}
	eventType := "Normal"
	if lastPhase != v1alpha1.PhasePendingDeletion {
		eventType = "Warning"
	}
	r.event(cmk, eventType, v1alpha1.EventDeleted, "Observe",
		"Key %s is deleted in the KMS (it was %s); it is never recreated", cmk.Status.KeyID, lastPhase)
}

func (r *CustomerMasterKeyReconciler) input(cmk *v1alpha1.CustomerMasterKey, key *kms.Key) planner.Input {
	in := planner.Input{
		Spec:        cmk.Spec,
		KeyID:       cmk.Status.KeyID,
		Key:         key,
		Deleting:    !cmk.DeletionTimestamp.IsZero(),
		PendingDays: cmk.Status.PendingDays,
		LastPhase:   cmk.Status.Phase,
		Adopted:     cmk.Spec.KeyID != "",
		Now:         r.Clock.Now(),
	}
	if p := cmk.Status.ImportParameters; p != nil {
		in.ImportParametersExpireAt = p.ExpiresAt.Time
	}
	if d := cmk.Status.DeletionDate; d != nil {
		in.DeletionDate = d.Time
	}
	return in
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

// CreateAttemptAnnotation records when the operator first set out to make the resource's key
// (RFC 3339). A KMS without idempotent creates (Huawei) may be left with an untagged key by a
// create that died before tagging it; that key is this resource's only if it was made after
// this time, with this resource's alias. A key made before, by anyone, is never taken.
const CreateAttemptAnnotation = "kms.cmk.io/create-attempted-at"

// ensureMetadata adds the finalizer, and records a create attempt when a key is about to be
// made, in one write.
func (r *CustomerMasterKeyReconciler) ensureMetadata(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	attempt := cmk.Status.KeyID == "" && cmk.Spec.KeyID == "" && !cmk.Spec.DeletionScheduled && cmk.Annotations[CreateAttemptAnnotation] == ""
	if controllerutil.ContainsFinalizer(cmk, Finalizer) && !attempt {
		return nil
	}
	patch := client.MergeFromWithOptions(cmk.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(cmk, Finalizer)
	if attempt {
		if cmk.Annotations == nil {
			cmk.Annotations = map[string]string{}
		}
		cmk.Annotations[CreateAttemptAnnotation] = r.Clock.Now().UTC().Format(attemptLayout)
	}
	if err := r.Patch(ctx, cmk, patch); err != nil {
		return fmt.Errorf("adding finalizer: %w", err)
	}
	r.writes.wrote(cmk)
	return nil
}

// attemptLayout is RFC 3339 with milliseconds, the precision of the KMS's creation dates.
const attemptLayout = "2006-01-02T15:04:05.000Z07:00"

// createAttempt is when the resource's first create attempt began; zero when none is recorded.
// Whoever may edit the resource may edit the annotation, so it is never taken to be earlier
// than the resource itself, which the apiserver dates: a tenant cannot widen the window to
// take a key someone made before the resource existed.
func createAttempt(cmk *v1alpha1.CustomerMasterKey) time.Time {
	t, err := time.Parse(time.RFC3339, cmk.Annotations[CreateAttemptAnnotation])
	if err != nil {
		return time.Time{}
	}
	if created := cmk.CreationTimestamp.Time; t.Before(created) {
		return created
	}
	return t
}

func (r *CustomerMasterKeyReconciler) event(cmk *v1alpha1.CustomerMasterKey, eventType, reason, action, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(cmk, nil, eventType, reason, action, note, args...)
	}
}

// SetupWithManager registers the reconciler. Status-only updates do not trigger it: it writes
// status itself and requeues on purpose. A finalizer taken off by someone else does, so it is
// put back before the resource can be deleted without its deletionPolicy. A resource gone wakes
// the resources of its namespace waiting for its key or alias.
func (r *CustomerMasterKeyReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, opts controller.Options) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.SyncPeriod <= 0 {
		r.SyncPeriod = DefaultSyncPeriod
	}
	if r.ImportRetry <= 0 {
		r.ImportRetry = DefaultImportRetry
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &v1alpha1.CustomerMasterKey{}, waitingIndex, waitingFor); err != nil {
		return fmt.Errorf("indexing the resources waiting for a key: %w", err)
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("customermasterkey").
		For(&v1alpha1.CustomerMasterKey{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, finalizerRemoved))).
		Watches(&v1alpha1.CustomerMasterKey{}, handler.EnqueueRequestsFromMapFunc(r.waitingOn),
			builder.WithPredicates(predicate.Funcs{
				CreateFunc: func(event.CreateEvent) bool { return false }, UpdateFunc: func(event.UpdateEvent) bool { return false },
				GenericFunc: func(event.GenericEvent) bool { return false }})).
		WithOptions(opts)
	if n, ok := kms.As[kms.Notifier](r.KMS); ok {
		src, err := keyChangeSource(ctx, mgr, n)
		if err != nil {
			return err
		}
		b = b.WatchesRawSource(src)
	}
	return b.Complete(r)
}

// waitingIndex indexes the resources refused a key or an alias another resource may free.
const waitingIndex = "kms.cmk.io/waiting"

// waitingFor is the value of waitingIndex: "true" for a resource waiting for a key or an alias.
func waitingFor(obj client.Object) []string {
	c, ok := obj.(*v1alpha1.CustomerMasterKey)
	if !ok {
		return nil
	}
	if ready := condition(c, v1alpha1.ConditionReady); ready != nil &&
		(ready.Reason == v1alpha1.ReasonAdoptionRefused || ready.Reason == v1alpha1.ReasonAliasInUse) {
		return []string{"true"}
	}
	return nil
}

// waitingOn maps a resource that is gone to the resources of its namespace refused a key or an
// alias it may have held, so they try again now rather than at the slow resync. The index
// keeps a mass deletion from listing the namespace once per resource.
func (r *CustomerMasterKeyReconciler) waitingOn(ctx context.Context, gone client.Object) []reconcile.Request {
	var list v1alpha1.CustomerMasterKeyList
	if err := r.List(ctx, &list, client.InNamespace(gone.GetNamespace()), client.MatchingFields{waitingIndex: "true"}); err != nil {
		log.FromContext(ctx).Error(err, "Listing the resources waiting for a key or alias")
		return nil
	}
	waiting := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		waiting = append(waiting, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return waiting
}

// finalizerRemoved passes updates that take the operator's finalizer off a resource.
var finalizerRemoved = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		return controllerutil.ContainsFinalizer(e.ObjectOld, Finalizer) && !controllerutil.ContainsFinalizer(e.ObjectNew, Finalizer)
	},
}
