package controllers

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// keyChangeSource turns the provider's own key changes (an embedded KMS deleting a key at its
// deletion date) into reconciles of the resources that hold those keys, so status follows at
// once rather than at the next requeue.
func keyChangeSource(mgr manager.Manager, n kms.Notifier) (source.Source, error) {
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
		reqs, _ := holdersOf(ctx, reader, keyID)
		return reqs
	}
	return source.Channel(events, handler.TypedEnqueueRequestsFromMapFunc(toRequests)), nil
}
