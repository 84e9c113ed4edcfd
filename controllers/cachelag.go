package controllers

import (
	"encoding/json"
	"hash/fnv"
	"strconv"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// ownWrites remembers, per resource, the resourceVersion of the operator's own last write, so a
// reconcile that reads an older copy from the informer cache (a timer or a KMS notification can
// fire before the cache has the status just written) waits for the cache rather than act on a
// status it already changed: issue import parameters twice (voiding the first), reschedule a
// deletion whose window it recorded, or report its own change as drift.
type ownWrites struct {
	versions sync.Map // types.UID → uint64
	// statuses holds, by UID, a digest of the status the operator last set out to write, so
	// that a status written by anyone else (a person with rights on the status subresource)
	// is told apart, and put right at once rather than at the next resync. It is recorded
	// before the write, so the watch can never bring the write first.
	statuses sync.Map // types.UID → uint64
}

// writingStatus records the status about to be written for o.
func (w *ownWrites) writingStatus(o *v1alpha1.CustomerMasterKey) {
	w.statuses.Store(o.UID, statusDigest(&o.Status))
}

// editedElsewhere reports whether o's status is not one the operator wrote last.
func (w *ownWrites) editedElsewhere(o *v1alpha1.CustomerMasterKey) bool {
	d, ok := w.statuses.Load(o.UID)
	return !ok || d.(uint64) != statusDigest(&o.Status)
}

// statusDigest is a digest of a status, for editedElsewhere; not for security.
func statusDigest(st *v1alpha1.CustomerMasterKeyStatus) uint64 {
	raw, _ := json.Marshal(st)
	h := fnv.New64a()
	_, _ = h.Write(raw)
	return h.Sum64()
}

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
func (w *ownWrites) forget(uid types.UID) {
	w.versions.Delete(uid)
	w.statuses.Delete(uid)
}
