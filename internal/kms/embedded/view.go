package embedded

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// view is the embedded KMS's own picture of its key Secrets, so that observing a key, finding
// one by alias or owner, and finding the keys due costs no request to the apiserver.
//
// It is a watch of the key Secrets of the KMS namespace (nothing else: no other Secret of
// that namespace, none of any other), with every answer the apiserver gives to this process's
// own writes laid over it until the watch has caught up. So a read never goes back past a
// write this process made, and the state a call reports is the state the apiserver stored.
// Writes still carry the resourceVersion they were judged on: a view that is behind a write of
// someone else (a person, a previous leader) makes the write fail with a conflict, and the
// write is judged again on a live read (see Provider.transitionSecret). A call that finds
// nothing to do on a view that is behind such a write is corrected as soon as the watch
// delivers the write: every change the watch brings that this process did not make is passed
// to changed, and so to the reconciler.
type view struct {
	namespace string
	informer  toolscache.SharedIndexInformer
	// changed is told the name of a key Secret someone else changed.
	changed func(name string)

	mu sync.Mutex
	// own holds, by Secret name, the answer to this process's latest write of the Secret,
	// until the watch delivers that version or a newer one.
	own map[string]*corev1.Secret
	// writing counts this process's writes of a Secret under way: a version the watch brings
	// meanwhile may be one of them, whose answer is not in yet.
	writing map[string]int
	// delivered is the newest resourceVersion the watch has handed to the view's handlers.
	// The informer's store has every version up to it, since it is written before handlers
	// are told; the reflector's own last version is ahead of the store for a moment, and a
	// Secret not yet in the store would pass for one deleted.
	delivered uint64
}

// Indexes of the view: a key Secret is found by the hash of its alias, by the UID of its owner,
// and by when the reaper must next act on it (Unix seconds), if ever.
const (
	byAlias = "alias"
	byOwner = "owner"
	byDue   = "due"
	// byCluster finds the keys of a cluster's provenance, for the orphan sweep.
	byCluster = "cluster"
)

var indexers = toolscache.Indexers{
	byAlias:   labelIndex(labelAliasHash),
	byOwner:   labelIndex(labelOwnerUID),
	byCluster: labelIndex(labelCluster),
	byDue: func(obj any) ([]string, error) {
		s := obj.(*corev1.Secret)
		if s.Labels[labelDue] != "true" {
			return nil, nil
		}
		r, err := readRecord(s)
		if err != nil {
			// Damaged: due now, so the reaper reports it.
			return []string{"0"}, nil
		}
		if due, ok := r.nextDue(); ok {
			return []string{strconv.FormatInt(due.Unix(), 10)}, nil
		}
		return nil, nil
	},
}

func labelIndex(label string) toolscache.IndexFunc {
	return func(obj any) ([]string, error) {
		if v, ok := obj.(*corev1.Secret).Labels[label]; ok {
			return []string{v}, nil
		}
		return nil, nil
	}
}

// startView lists and then watches the key Secrets of namespace until ctx ends, and returns
// once the first list is in. The list is paged, and a watch that closes is resumed from the
// last version seen, as client-go's informers do.
func startView(ctx context.Context, c client.Client, namespace string, log logr.Logger, changed func(name string)) (*view, error) {
	w, ok := c.(client.WithWatch)
	if !ok {
		return nil, fmt.Errorf("the embedded KMS needs a client that can watch its key Secrets")
	}
	selector := client.MatchingLabels{labelKey: "true"}
	lw := &toolscache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			list := &corev1.SecretList{}
			err := w.List(ctx, list, &client.ListOptions{Raw: &o, Limit: o.Limit, Continue: o.Continue},
				client.InNamespace(namespace), selector)
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return w.Watch(ctx, &corev1.SecretList{}, &client.ListOptions{Raw: &o}, client.InNamespace(namespace), selector)
		},
	}
	v := &view{
		namespace: namespace,
		informer: toolscache.NewSharedIndexInformerWithOptions(lw, &corev1.Secret{},
			toolscache.SharedIndexInformerOptions{Indexers: indexers}),
		changed: changed,
		own:     map[string]*corev1.Secret{},
		writing: map[string]int{},
	}
	// Nothing here reads managedFields; without them the view of thousands of keys is smaller.
	if err := v.informer.SetTransform(func(obj any) (any, error) {
		if m, ok := obj.(metav1.Object); ok {
			m.SetManagedFields(nil)
		}
		return obj, nil
	}); err != nil {
		return nil, err
	}
	var refused atomic.Value
	if err := v.informer.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *toolscache.Reflector, err error) {
		if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
			// Not a passing failure: without its watch the KMS relists every key over and over.
			refused.Store(err)
			log.Error(err, "The embedded KMS may not list or watch its key Secrets: it needs get, list, watch, create and update "+
				"on Secrets in its namespace (config/rbac)", "namespace", namespace)
			return
		}
		log.Info("Listing or watching the key Secrets failed; trying again", "error", err.Error())
	}); err != nil {
		return nil, err
	}
	if _, err := v.informer.AddEventHandler(toolscache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) { v.caughtUp(obj, !initial) },
		// A relist hands over every Secret again as an update: only a new version is news.
		UpdateFunc: func(old, obj any) { v.caughtUp(obj, newer(obj.(*corev1.Secret), old.(*corev1.Secret))) },
		DeleteFunc: func(obj any) { v.gone(obj) },
	}); err != nil {
		return nil, err
	}
	run, stop := context.WithCancel(ctx)
	go v.informer.RunWithContext(run)
	// Waits for the first list, but not for a refusal, which waiting does not cure.
	deadline := time.Now().Add(syncTimeout)
	for !v.informer.HasSynced() {
		err, _ := refused.Load().(error)
		if err == nil && time.Now().After(deadline) {
			err = fmt.Errorf("not listed within %s", syncTimeout)
		}
		if err == nil && ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		if err != nil {
			stop()
			return nil, fmt.Errorf("the embedded KMS cannot list its key Secrets in namespace %s (it needs get, list, watch, "+
				"create and update on Secrets there: config/rbac): %w", namespace, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = stop // runs until ctx ends
	return v, nil
}

// syncTimeout bounds the first list of the key Secrets: well within the manager's liveness
// probe, so the reason is logged before the pod is restarted.
const syncTimeout = 30 * time.Second

// caughtUp drops this process's write of a Secret once the watch has delivered it or a newer
// version, and passes on a change this process did not make.
func (v *view) caughtUp(obj any, change bool) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	v.mu.Lock()
	v.deliver(s)
	mine, known := v.own[s.Name]
	if known && !newer(mine, s) {
		delete(v.own, s.Name)
	}
	// Not news: a version this process wrote or has read, or one older than those, or one
	// that may be the answer to a write still under way.
	news := change && v.writing[s.Name] == 0 && (!known || newer(s, mine))
	v.mu.Unlock()
	if news && v.changed != nil {
		v.changed(s.Name)
	}
}

// gone forgets a deleted Secret, this process's writes of it included: a write after the
// deletion could only be a Create, whose version the watch brings next (and until it does, the
// Secret is read from the apiserver).
func (v *view) gone(obj any) {
	if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	v.mu.Lock()
	v.deliver(s)
	delete(v.own, s.Name)
	v.mu.Unlock()
	if v.changed != nil {
		v.changed(s.Name)
	}
}

// deliver records that the watch handed the view version s. v.mu is held.
func (v *view) deliver(s *corev1.Secret) {
	if rv, err := strconv.ParseUint(s.ResourceVersion, 10, 64); err == nil && rv > v.delivered {
		v.delivered = rv
	}
}

// write marks a write of this process to a Secret as under way, until the returned function
// is called (after saw, when the write succeeded).
func (v *view) write(name string) (done func()) {
	v.mu.Lock()
	v.writing[name]++
	v.mu.Unlock()
	return func() {
		v.mu.Lock()
		if v.writing[name]--; v.writing[name] == 0 {
			delete(v.writing, name)
		}
		v.mu.Unlock()
	}
}

// saw lays over the view a version of a Secret this process got from the apiserver: the answer
// to its write, or a live read. It is kept until the watch hands that version (or a later one)
// to the view, even when the informer's store has it already: the store is written before the
// handlers are told, and a version the handlers meet that is not kept would pass for someone
// else's change.
func (v *view) saw(s *corev1.Secret) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if mine, ok := v.own[s.Name]; ok && newer(mine, s) {
		return
	}
	if cached, ok := v.cached(s.Name); v.handedOver(s) && (!ok || !newer(s, cached)) {
		// Handed over and in the store (or a later version is), or handed over and deleted
		// since. A store older than s while the handlers were told of later versions is a
		// relist, which tells of Secrets in name order: s is still to come, and is kept.
		return
	}
	s = s.DeepCopy()
	s.ManagedFields = nil
	v.own[s.Name] = s
}

// get returns a copy of the newest version of the Secret the view knows, if any.
func (v *view) get(name string) (*corev1.Secret, bool) {
	v.mu.Lock()
	mine, mineOK := v.own[name]
	switch {
	case mineOK && v.passed(mine):
		delete(v.own, name)
		mineOK = false
	case mineOK && v.unsure(mine):
		mineOK = false // asked of the apiserver; kept, so that its delivery is no news
	}
	v.mu.Unlock()
	cached, cachedOK := v.cached(name)
	switch {
	case mineOK && (!cachedOK || newer(mine, cached)):
		return mine.DeepCopy(), true
	case cachedOK:
		return cached.DeepCopy(), true
	}
	return nil, false
}

// byIndex returns copies of the key Secrets whose label of the index has this value, by name.
func (v *view) byIndex(index, value string) ([]*corev1.Secret, error) {
	objs, err := v.informer.GetIndexer().ByIndex(index, value)
	if err != nil {
		return nil, err
	}
	found := map[string]*corev1.Secret{}
	for _, obj := range objs {
		s := obj.(*corev1.Secret)
		found[s.Name] = s
	}
	v.mu.Lock()
	for name, mine := range v.own {
		if cached, ok := v.cached(name); ok && !newer(mine, cached) {
			continue // the index already reflects the write
		}
		if v.passed(mine) {
			delete(v.own, name)
			delete(found, name)
			continue
		}
		if v.unsure(mine) {
			delete(found, name)
			continue
		}
		// The cache's version of the Secret is older than this process's write: the write
		// decides whether it matches.
		delete(found, name)
		if values, _ := indexers[index](mine); slices.Contains(values, value) {
			found[name] = mine
		}
	}
	v.mu.Unlock()
	out := make([]*corev1.Secret, 0, len(found))
	for _, s := range found {
		out = append(out, s.DeepCopy())
	}
	slices.SortFunc(out, func(a, b *corev1.Secret) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// dueBy returns copies of the key Secrets the reaper must act on by now, and the earliest time
// after now at which another one is due (zero when none is). It reads only the Secrets due:
// the others are known by their time in the index alone.
func (v *view) dueBy(now time.Time) ([]*corev1.Secret, time.Time, error) {
	times := v.informer.GetIndexer().ListIndexFuncValues(byDue)
	// This process's writes the store does not hold yet (unsure): due ones are reaped all the
	// same, the reap reading them afresh from the apiserver, so that a key scheduled a moment
	// ago is not left for the next pass (or found gone, and skipped).
	var unstored []*corev1.Secret
	v.mu.Lock()
	for _, mine := range v.own {
		if v.passed(mine) {
			continue
		}
		values, _ := indexers[byDue](mine)
		if v.unsure(mine) {
			for _, value := range values {
				if sec, err := strconv.ParseInt(value, 10, 64); err == nil && !time.Unix(sec, 0).After(now) {
					unstored = append(unstored, mine.DeepCopy())
				}
			}
			continue
		}
		times = append(times, values...)
	}
	v.mu.Unlock()
	slices.Sort(times)
	times = slices.Compact(times)
	var due []*corev1.Secret
	var next time.Time
	for _, value := range times {
		sec, err := strconv.ParseInt(value, 10, 64)
		if err != nil {
			continue
		}
		if at := time.Unix(sec, 0); at.After(now) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		secrets, err := v.byIndex(byDue, value)
		if err != nil {
			return nil, time.Time{}, err
		}
		due = append(due, secrets...)
	}
	for _, s := range unstored {
		if !slices.ContainsFunc(due, func(d *corev1.Secret) bool { return d.Name == s.Name }) {
			due = append(due, s)
		}
	}
	slices.SortFunc(due, func(a, b *corev1.Secret) int { return strings.Compare(a.Name, b.Name) })
	return due, next, nil
}

// passed reports whether the watch has gone past version s of a Secret it does not hold: the
// Secret was deleted (or lost its label) after that version, whatever order this process
// learned of the two in. Such a version is no longer laid over the view; a read of the Secret
// then asks the apiserver. v.mu is held.
func (v *view) passed(s *corev1.Secret) bool {
	if _, ok := v.cached(s.Name); ok {
		return false
	}
	return v.handedOver(s)
}

// unsure reports whether the reflector has received versions past s while the store holds no
// version of the Secret and the handlers were told of none past s: either s is still on its
// way to the store (a moment), or the Secret was deleted while the watch was down and a relist
// left it out (no handler is told of a Secret the store never held). The view then does not
// answer with s; a read asks the apiserver, and one that finds nothing drops s (forget). v.mu
// is held.
func (v *view) unsure(s *corev1.Secret) bool {
	if _, ok := v.cached(s.Name); ok {
		return false
	}
	synced, errS := strconv.ParseUint(v.informer.LastSyncResourceVersion(), 10, 64)
	version, errV := strconv.ParseUint(s.ResourceVersion, 10, 64)
	return errS == nil && errV == nil && version <= synced
}

// forget drops this process's write of a Secret the apiserver no longer has.
func (v *view) forget(name string) {
	v.mu.Lock()
	delete(v.own, name)
	v.mu.Unlock()
}

// handedOver reports whether the watch has handed version s of a Secret, or a later version of
// any, to the view's handlers. That is judged by what the handlers were told, not by what the
// reflector has received: a Secret this process just created may be received and not yet
// stored, and taken for deleted, its creation would later come back from the watch as someone
// else's change (a false notification that TestDeletionAtDate once read as the reaper's).
// Handlers are told in the watch's order, so every version up to delivered is in the store,
// unless deleted since. v.mu is held.
func (v *view) handedOver(s *corev1.Secret) bool {
	version, err := strconv.ParseUint(s.ResourceVersion, 10, 64)
	return err == nil && version <= v.delivered
}

func (v *view) cached(name string) (*corev1.Secret, bool) {
	obj, ok, err := v.informer.GetIndexer().GetByKey(v.namespace + "/" + name)
	if err != nil || !ok {
		return nil, false
	}
	return obj.(*corev1.Secret), true
}

// newer reports whether a is a later version of the Secret than b. The apiserver's
// resourceVersions are etcd revisions, which only grow; one that is not a number is taken to
// be the watch's, which is then trusted over this process's memory of its write.
func newer(a, b *corev1.Secret) bool {
	va, errA := strconv.ParseUint(a.ResourceVersion, 10, 64)
	vb, errB := strconv.ParseUint(b.ResourceVersion, 10, 64)
	return errA == nil && errB == nil && va > vb
}
