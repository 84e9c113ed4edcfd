package controllers

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// keyIDIndex indexes CustomerMasterKeys by status.keyID, to find the resource of a key the KMS
// changed by itself.
const keyIDIndex = "status.keyID"

// keyChangeSource turns the provider's own key changes (an embedded KMS deleting a key at its
// deletion date) into reconciles of the resources that hold those keys, so status follows at
// once rather than at the next requeue.
func keyChangeSource(ctx context.Context, mgr manager.Manager, n kms.Notifier) (source.Source, error) {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &v1alpha1.CustomerMasterKey{}, keyIDIndex, func(o client.Object) []string {
		if id := o.(*v1alpha1.CustomerMasterKey).Status.KeyID; id != "" {
			return []string{id}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	events := make(chan event.TypedGenericEvent[string])
	forward := manager.RunnableFunc(func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case id := <-n.Changes():
				select {
				case events <- event.TypedGenericEvent[string]{Object: id}:
				case <-ctx.Done():
					return nil
				}
			}
		}
	})
	if err := mgr.Add(forward); err != nil {
		return nil, err
	}
	reader := mgr.GetClient()
	toRequests := func(ctx context.Context, keyID string) []reconcile.Request {
		var list v1alpha1.CustomerMasterKeyList
		if err := reader.List(ctx, &list, client.MatchingFields{keyIDIndex: keyID}); err != nil {
			return nil
		}
		reqs := make([]reconcile.Request, 0, len(list.Items))
		for i := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
		return reqs
	}
	return source.Channel(events, handler.TypedEnqueueRequestsFromMapFunc(toRequests)), nil
}
