package controllers

import (
	"strconv"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ownWrites remembers, per resource, the resourceVersion of the operator's own last write, so a
// reconcile that reads an older copy from the informer cache (a timer or a KMS notification can
// fire before the cache has the status just written) waits for the cache rather than act on a
// status it already changed: issue import parameters twice (voiding the first), reschedule a
// deletion whose window it recorded, or report its own change as drift.
type ownWrites struct{ versions sync.Map } // types.UID → uint64

// wrote records the resourceVersion the apiserver gave the object on the operator's write.
func (w *ownWrites) wrote(o client.Object) {
	if v, err := strconv.ParseUint(o.GetResourceVersion(), 10, 64); err == nil {
		w.versions.Store(o.GetUID(), v)
	}
}

// behind reports whether o, as read from the cache, is older than the operator's last write
// to it. resourceVersions are opaque to clients in general; the apiserver's are etcd revisions,
// which only grow, and anything else is taken as current.
func (w *ownWrites) behind(o client.Object) bool {
	v, ok := w.versions.Load(o.GetUID())
	if !ok {
		return false
	}
	current, err := strconv.ParseUint(o.GetResourceVersion(), 10, 64)
	if err != nil || current >= v.(uint64) {
		w.versions.CompareAndDelete(o.GetUID(), v)
		return false
	}
	return true
}

// forget drops what is remembered of a resource that is gone.
func (w *ownWrites) forget(uid types.UID) { w.versions.Delete(uid) }
