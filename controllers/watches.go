package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
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
)

// SetupWithManager registers the reconciler. Its own status writes do not trigger it: it
// writes status itself and requeues on purpose; a status someone else wrote does, so a wrong
// status is put right at once. A finalizer taken off by someone else does, so it is
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
	if err := mgr.GetFieldIndexer().IndexField(ctx, &v1alpha1.CustomerMasterKey{}, keyIDIndex, byKeyID); err != nil {
		return fmt.Errorf("indexing the resources by key ID: %w", err)
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("customermasterkey").
		For(&v1alpha1.CustomerMasterKey{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, finalizerRemoved, r.statusEdited()))).
		Watches(&v1alpha1.CustomerMasterKey{}, handler.EnqueueRequestsFromMapFunc(r.waitingOn),
			builder.WithPredicates(predicate.Funcs{
				CreateFunc: func(event.CreateEvent) bool { return false }, UpdateFunc: func(event.UpdateEvent) bool { return false },
				GenericFunc: func(event.GenericEvent) bool { return false }})).
		WithOptions(opts)
	b, err := r.watchUsage(mgr, b)
	if err != nil {
		return err
	}
	if n, ok := kms.As[kms.Notifier](r.KMS); ok {
		src, err := keyChangeSource(mgr, n)
		if err != nil {
			return err
		}
		b = b.WatchesRawSource(src)
	}
	return b.Complete(r)
}

// keyIDIndex indexes the resources by status.keyID, to find the resource of a key the KMS
// changed by itself, or whose consumers changed.
const keyIDIndex = "status.keyID"

func byKeyID(obj client.Object) []string {
	if c, ok := obj.(*v1alpha1.CustomerMasterKey); ok && c.Status.KeyID != "" {
		return []string{c.Status.KeyID}
	}
	return nil
}

// holdersOf are the reconciles of the resources whose status records this key.
func holdersOf(ctx context.Context, reader client.Reader, keyID string) ([]reconcile.Request, error) {
	var list v1alpha1.CustomerMasterKeyList
	if err := reader.List(ctx, &list, client.MatchingFields{keyIDIndex: keyID}); err != nil {
		return nil, err
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs, nil
}

// waitingIndex indexes the resources refused a key or an alias another resource may free.
const waitingIndex = "kms.cmk.io/waiting"

// waitingFor is the value of waitingIndex: "true" for a resource waiting for a key or an alias.
func waitingFor(obj client.Object) []string {
	c, ok := obj.(*v1alpha1.CustomerMasterKey)
	if !ok {
		return nil
	}
	if ready := meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionReady); ready != nil &&
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

// statusEdited passes updates whose status the operator did not write: someone with rights on
// the status subresource changed it (say, phase Enabled on a key that waits for material), and
// the next reconcile reads the KMS and writes the status it says.
func (r *CustomerMasterKeyReconciler) statusEdited() predicate.Funcs {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			old, okOld := e.ObjectOld.(*v1alpha1.CustomerMasterKey)
			cur, okNew := e.ObjectNew.(*v1alpha1.CustomerMasterKey)
			return okOld && okNew && !equality.Semantic.DeepEqual(old.Status, cur.Status) && r.writes.editedElsewhere(cur)
		},
		CreateFunc: func(event.CreateEvent) bool { return false }, DeleteFunc: func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}
