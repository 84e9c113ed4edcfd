// Package controllers holds the CustomerMasterKey reconciler: it finds the resource's key in the
// KMS, asks the planner for the next action, takes it, reads the key back, and writes the
// status internal/keystatus computes from what it observed and did. NewManager builds the
// manager that runs it, for main and for the tests alike.
package controllers

import (
	"cmp"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/keystatus"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/planner"
	"github.com/cmk-operator/cmk-operator/internal/usage"
)

// Finalizer holds a resource until its deletionPolicy has been applied to its key.
const Finalizer = "kms.cmk.io/deletion-policy"

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
	// Usage indexes what depends on each key (usage.go); nil counts nothing.
	Usage *usage.Index
	// UsageKinds are the kinds whose objects declare, by annotation, the keys they use (nil:
	// DefaultUsageKinds).
	UsageKinds []string

	writes ownWrites
	// owned remembers, by resource UID, the key whose ownership verifyOwner confirmed.
	owned sync.Map
	// observing remembers, by resource UID, the key an Observe resource was found allowed to
	// observe (see observeOnly).
	observing sync.Map
	// recorded remembers, by resource UID, its key's provenance as last read or written (a
	// recordedPolicy; see keepPolicy).
	recorded sync.Map
	// cluster is the cluster's ID, once read (see clusterID).
	cluster atomic.Value
}

// +kubebuilder:rbac:groups=kms.cmk.io,resources=customermasterkeys,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=kms.cmk.io,resources=customermasterkeys/status,verbs=get;patch
// +kubebuilder:rbac:groups=kms.cmk.io,resources=customermasterkeys/finalizers,verbs=update
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// Reconcile brings one key closer to its spec: observe, plan, act, observe again, report.
func (r *CustomerMasterKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	cmk := &v1alpha1.CustomerMasterKey{}
	if err := r.Get(ctx, req.NamespacedName, cmk); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.writes.behind(cmk) {
		return requeueRateLimited(), nil
	}
	if !cmk.DeletionTimestamp.IsZero() && controllerutil.ContainsFinalizer(cmk, Finalizer) {
		// An uninstall deletes every resource with the CRD: that is never a mass deletion of
		// keys, whatever deletionPolicy says, and a pause does not hold it up.
		switch gone, err := r.crdTerminating(ctx); {
		case err != nil:
			return r.settle(ctx, ctrl.Result{}, err)
		case gone:
			return r.settle(ctx, ctrl.Result{}, r.uninstall(ctx, cmk))
		}
	}
	if cmk.Annotations[v1alpha1.PausedAnnotation] == "true" {
		before := cmk.DeepCopy()
		r.countUsage(ctx, cmk)
		return r.report(ctx, before, cmk, outcome{paused: true})
	}
	if !cmk.DeletionTimestamp.IsZero() {
		if !controllerutil.ContainsFinalizer(cmk, Finalizer) {
			return ctrl.Result{}, nil
		}
		before := cmk.DeepCopy()
		o, release := r.finalize(ctx, cmk)
		if !release {
			return r.report(ctx, before, cmk, o)
		}
		if err := r.release(ctx, cmk); err != nil {
			// What the deletion did to the key (a window just scheduled) is still recorded.
			return r.report(ctx, before, cmk, failed(o.key, "Removing the finalizer of", err))
		}
		r.writes.forget(cmk.UID)
		r.owned.Delete(cmk.UID)
		r.recorded.Delete(cmk.UID)
		r.observing.Delete(cmk.UID)
		return r.settle(ctx, ctrl.Result{}, nil)
	}
	if err := r.ensureMetadata(ctx, cmk); err != nil {
		// Not found: deleted before it ever had the finalizer, so before any key was made.
		return r.settle(ctx, ctrl.Result{}, client.IgnoreNotFound(err))
	}
	before := cmk.DeepCopy()
	return r.report(ctx, before, cmk, r.sync(ctx, cmk))
}

// outcome is what one reconcile observed and did, for keystatus to turn into status and for
// next to turn into when to look again.
type outcome struct {
	// key is the key as last read; nil when there is none, or it could not be read.
	key *kms.Key
	// failure is what stopped the reconcile short of the spec; nil when nothing did.
	failure *keystatus.Failure
	// decision is the planner's last word: None with when to look again, or Release.
	decision planner.Decision
	// cut: the reconcile made maxActions calls and has more to make.
	cut bool
	// paused: the resource carries v1alpha1.PausedAnnotation; nothing was read or done.
	paused bool
}

// failed is the outcome of an error met while doing something to the key as last read.
func failed(key *kms.Key, doing string, err error) outcome {
	return outcome{key: key, failure: keystatus.Classify(err, doing)}
}

// sync finds the key and takes the planner's actions until the key is as the spec asks.
func (r *CustomerMasterKeyReconciler) sync(ctx context.Context, cmk *v1alpha1.CustomerMasterKey) outcome {
	if cmk.Spec.ManagementPolicy == v1alpha1.ManagementPolicyObserve {
		return r.observeOnly(ctx, cmk)
	}
	key, err := r.findKey(ctx, cmk)
	if err != nil {
		return failed(nil, "Observing", err)
	}
	// Counted for the key found, also one adopted or taken back in this very reconcile.
	r.countUsage(ctx, cmk)
	if msg := mismatch(cmk, key); msg != "" {
		return failed(key, "", &keystatus.Blocked{Reason: v1alpha1.ReasonSpecMismatch, Message: msg})
	}
	// A failed read of rotation or tags holds up only rotation and tags: the key's state (a
	// deletion to cancel, say) still follows the spec, and the failure is reported after.
	key, extrasErr := r.withExtras(ctx, cmk, key)
	r.reportExtrasDrift(cmk, key)
	o, readErr := r.drive(ctx, cmk, key)
	switch {
	case o.failure != nil || o.cut:
		return o
	case readErr != nil || extrasErr != nil:
		return failed(o.key, "Reading rotation and tags of", cmp.Or(readErr, extrasErr))
	}
	if msg := r.unsupported(cmk); msg != "" {
		return failed(o.key, "", &keystatus.Blocked{Reason: v1alpha1.ReasonUnsupported, Message: msg})
	}
	return o
}
