// Package controllers holds the CustomerMasterKey reconciler: it observes the key in the KMS,
// asks the planner for the one next action, takes it, reads the key back and writes status.
package controllers

import (
	"context"
	"errors"
	"fmt"
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
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
)

// Finalizer holds a resource until its deletionPolicy has been applied to its key.
const Finalizer = "kms.cmk.io/deletion-policy"

// DefaultSyncPeriod is how often a settled key is looked at again, to catch changes made
// outside Kubernetes.
const DefaultSyncPeriod = 10 * time.Minute

// requeueNow asks for another reconcile at once, when one action is done and another is due.
const requeueNow = time.Millisecond

// CustomerMasterKeyReconciler drives a KMS toward each CustomerMasterKey's spec.
type CustomerMasterKeyReconciler struct {
	client.Client
	KMS      kms.Provider
	Recorder events.EventRecorder
	// SecretReader reads keyMaterial Secrets directly, without a cache (the manager's API
	// reader); nil means the client.
	SecretReader client.Reader
	// Clock is the time source; tests pass a fake one.
	Clock clock.PassiveClock
	// SyncPeriod is the slow resync of settled keys.
	SyncPeriod time.Duration
	// ImportRetry is how soon a refused import is tried again.
	ImportRetry time.Duration
}

// +kubebuilder:rbac:groups=kms.cmk.io,resources=customermasterkeys,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=kms.cmk.io,resources=customermasterkeys/status,verbs=get;patch
// +kubebuilder:rbac:groups=kms.cmk.io,resources=customermasterkeys/finalizers,verbs=update
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// Reconcile brings one key one step closer to its spec.
func (r *CustomerMasterKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	cmk := &v1alpha1.CustomerMasterKey{}
	if err := r.Get(ctx, req.NamespacedName, cmk); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !cmk.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, cmk)
	}
	if err := r.ensureFinalizer(ctx, cmk); err != nil {
		return quietOnConflict(err)
	}

	before := cmk.DeepCopy()
	result, syncErr := r.sync(ctx, cmk)
	if err := r.patchStatus(ctx, before, cmk); err != nil {
		if syncErr == nil {
			return quietOnConflict(err)
		}
		return ctrl.Result{}, errors.Join(syncErr, err)
	}
	return result, syncErr
}

// sync observes the key, takes the planner's next action and records the outcome in
// cmk.Status. Errors it returns are transient; terminal ones are only reported in status.
func (r *CustomerMasterKeyReconciler) sync(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) (ctrl.Result, error) {
	key, err := r.observe(ctx, managedKeyID(cmk))
	if err != nil {
		return ctrl.Result{}, r.failed(cmk, "Observing", err)
	}
	if blocked := r.adopt(cmk, key); blocked {
		return ctrl.Result{RequeueAfter: r.SyncPeriod}, nil
	}
	if msg := mismatch(cmk, key); msg != "" {
		r.setObserved(cmk, key)
		r.setBlocked(cmk, v1alpha1.ReasonSpecMismatch, v1alpha1.ReasonSpecMismatch, msg)
		return ctrl.Result{RequeueAfter: r.SyncPeriod}, nil
	}
	decision := planner.Next(r.input(cmk, key))
	if planner.Drift(cmk.Status.Phase, cmk.Generation != cmk.Status.ObservedGeneration, key, decision) {
		r.event(cmk, "Warning", v1alpha1.EventDriftDetected, "Observe",
			"Key %s is %s outside Kubernetes (status said %s); returning it to the spec: %s", key.ID, key.State, cmk.Status.Phase, decision.Action)
	}
	if decision.Action != planner.None {
		log.FromContext(ctx).Info("Acting on key", "action", decision.Action, "keyID", cmk.Status.KeyID)
		after, err := r.act(ctx, cmk, key, decision.Action)
		var refused *importFailure
		switch {
		case errors.As(err, &refused):
			r.setObserved(cmk, key)
			r.setBlocked(cmk, v1alpha1.EventImportFailed, refused.reason, refused.message)
			return ctrl.Result{RequeueAfter: r.ImportRetry}, nil
		case kms.IsTerminal(err):
			r.setTerminal(cmk, err)
			return ctrl.Result{}, nil
		case err != nil:
			return ctrl.Result{}, r.failed(cmk, string(decision.Action), err)
		}
		key = after
		decision = planner.Next(r.input(cmk, key))
	}
	lastPhase := cmk.Status.Phase
	r.setObserved(cmk, key)
	r.reportDeletion(cmk, lastPhase)
	return r.requeue(decision), nil
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
		Spec:     cmk.Spec,
		KeyID:    cmk.Status.KeyID,
		Key:      key,
		Deleting: !cmk.DeletionTimestamp.IsZero(),
		Now:      r.Clock.Now(),
	}
	if p := cmk.Status.ImportParameters; p != nil {
		in.ImportParametersExpireAt = p.ExpiresAt.Time
	}
	return in
}

// observe reads the key from the KMS; nil when there is none yet or the KMS no longer has it.
func (r *CustomerMasterKeyReconciler) observe(ctx context.Context, keyID string) (*kms.Key, error) {
	if keyID == "" {
		return nil, nil
	}
	key, err := r.KMS.Observe(ctx, keyID)
	if kms.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &key, nil
}

// requeue turns a decision into when to look at the key again: at once when another action
// is due, at the time the KMS changes the key by itself, else at the slow resync, jittered
// so thousands of keys do not come due together.
func (r *CustomerMasterKeyReconciler) requeue(d planner.Decision) ctrl.Result {
	if d.Action != planner.None {
		return ctrl.Result{RequeueAfter: requeueNow}
	}
	resync := wait.Jitter(r.SyncPeriod, 0.1)
	if !d.RecheckAt.IsZero() {
		if until := d.RecheckAt.Sub(r.Clock.Now()); until < resync {
			return ctrl.Result{RequeueAfter: max(until, requeueNow)}
		}
	}
	return ctrl.Result{RequeueAfter: resync}
}

func (r *CustomerMasterKeyReconciler) ensureFinalizer(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) error {
	if controllerutil.ContainsFinalizer(cmk, Finalizer) {
		return nil
	}
	patch := client.MergeFromWithOptions(cmk.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(cmk, Finalizer)
	if err := r.Patch(ctx, cmk, patch); err != nil {
		return fmt.Errorf("adding finalizer: %w", err)
	}
	return nil
}

func (r *CustomerMasterKeyReconciler) event(cmk *v1alpha1.CustomerMasterKey, eventType, reason, action, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(cmk, nil, eventType, reason, action, note, args...)
	}
}

// quietOnConflict retries a write that lost an optimistic-lock race without logging an error:
// the next reconcile reads the newer object.
func quietOnConflict(err error) (ctrl.Result, error) {
	if apierrors.IsConflict(err) {
		return ctrl.Result{RequeueAfter: requeueNow}, nil
	}
	return ctrl.Result{}, err
}

// SetupWithManager registers the reconciler. Status-only updates do not trigger it: it writes
// status itself and requeues on purpose.
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
	b := ctrl.NewControllerManagedBy(mgr).
		Named("customermasterkey").
		For(&v1alpha1.CustomerMasterKey{}, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		WithOptions(opts)
	if n, ok := r.KMS.(kms.Notifier); ok {
		src, err := keyChangeSource(ctx, mgr, n)
		if err != nil {
			return err
		}
		b = b.WatchesRawSource(src)
	}
	return b.Complete(r)
}
