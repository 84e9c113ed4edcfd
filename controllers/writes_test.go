package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// writes counts what a reconcile writes: status patches, other writes to resources, and
// writes to the embedded KMS's Secrets.
type writes struct {
	status, object, secret atomic.Int64
	// secretReads counts gets and lists of Secrets: what a view of the KMS's keys saves.
	secretReads atomic.Int64
}

func (w *writes) reset() {
	w.status.Store(0)
	w.object.Store(0)
	w.secret.Store(0)
	w.secretReads.Store(0)
}

func (w *writes) get() [3]int64 { return [3]int64{w.status.Load(), w.object.Load(), w.secret.Load()} }

func (w *writes) count(o client.Object) {
	if _, ok := o.(*corev1.Secret); ok {
		w.secret.Add(1)
	} else {
		w.object.Add(1)
	}
}

func (w *writes) client() client.WithWatch {
	return interceptor.NewClient(env.Client, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, o client.Object, opts ...client.GetOption) error {
			if _, ok := o.(*corev1.Secret); ok {
				w.secretReads.Add(1)
			}
			return c.Get(ctx, key, o, opts...)
		},
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if _, ok := list.(*corev1.SecretList); ok {
				w.secretReads.Add(1)
			}
			return c.List(ctx, list, opts...)
		},
		Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
			w.count(o)
			return c.Create(ctx, o, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.UpdateOption) error {
			w.count(o)
			return c.Update(ctx, o, opts...)
		},
		Patch: func(ctx context.Context, c client.WithWatch, o client.Object, p client.Patch, opts ...client.PatchOption) error {
			w.count(o)
			return c.Patch(ctx, o, p, opts...)
		},
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
			w.status.Add(1)
			return c.SubResource(sub).Patch(ctx, o, p, opts...)
		},
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, o client.Object, opts ...client.SubResourceUpdateOption) error {
			w.status.Add(1)
			return c.SubResource(sub).Update(ctx, o, opts...)
		},
	})
}

// directReconciler is a reconciler with no manager, whose every write is counted.
func directReconciler(h *harness) (*CustomerMasterKeyReconciler, *writes) {
	w := &writes{}
	c := w.client()
	h.kms = h.newProvider(c)
	return &CustomerMasterKeyReconciler{Client: c, KMS: h.kms, Clock: h.clock, SyncPeriod: DefaultSyncPeriod, ImportRetry: DefaultImportRetry}, w
}

// TestWritesPerReconcile checks the write budget: one status write per transition, one Secret
// write per KMS state change, and nothing at all for a reconcile that finds nothing new.
func TestWritesPerReconcile(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, w := directReconciler(h)
	h.create(h.cmk("counted"))
	req := reconcile.Request{NamespacedName: client.ObjectKey{Namespace: h.ns, Name: "counted"}}
	step := func(what string, want [3]int64) reconcile.Result {
		t.Helper()
		w.reset()
		res, err := r.Reconcile(context.Background(), req)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := w.get(); got != want {
			t.Errorf("%s: wrote [status, object, secret] = %v, want %v", what, got, want)
		}
		return res
	}

	// The first reconcile adds the finalizer, creates the key (its Secret, and the reservation
	// of its alias) and records it.
	step("create", [3]int64{1, 1, 2})
	if at := h.get("counted").Annotations[CreateAttemptAnnotation]; at == "" {
		t.Error("the create attempt was not recorded with the finalizer")
	}
	res := step("no-op after create", [3]int64{0, 0, 0})
	if res.RequeueAfter < 9*time.Minute {
		t.Errorf("a settled key requeues after %v, want the slow resync", res.RequeueAfter)
	}

	for _, tc := range []struct {
		spec  map[string]any
		phase v1alpha1.Phase
	}{
		{map[string]any{"enabled": false}, v1alpha1.PhaseDisabled},
		{map[string]any{"deletionScheduled": true}, v1alpha1.PhasePendingDeletion},
		{map[string]any{"deletionScheduled": false}, v1alpha1.PhaseDisabled},
		{map[string]any{"enabled": true}, v1alpha1.PhaseEnabled},
		{map[string]any{"description": "now described"}, v1alpha1.PhaseEnabled},
	} {
		h.patch("counted", tc.spec)
		step(string(tc.phase)+" transition", [3]int64{1, 0, 1})
		if got := h.get("counted"); got.Status.Phase != tc.phase || got.Status.ObservedGeneration != got.Generation {
			t.Errorf("after %v: phase %s at generation %d/%d", tc.spec, got.Status.Phase, got.Status.ObservedGeneration, got.Generation)
		}
		step(string(tc.phase)+" no-op", [3]int64{0, 0, 0})
	}

	// While pending deletion, the key is looked at again at its deletion date, not polled.
	h.patch("counted", map[string]any{"enabled": false, "deletionScheduled": true})
	step("schedule", [3]int64{1, 0, 1})
	res = step("pending no-op", [3]int64{0, 0, 0})
	if res.RequeueAfter < 9*time.Minute || res.RequeueAfter > 11*time.Minute {
		t.Errorf("a week before the deletion date, requeue after %v, want the slow resync", res.RequeueAfter)
	}
	h.clock.Step(7*24*time.Hour - time.Minute)
	res = step("pending no-op near the date", [3]int64{0, 0, 0})
	if res.RequeueAfter != time.Minute {
		t.Errorf("a minute before the deletion date, requeue after %v, want 1m", res.RequeueAfter)
	}
}

// TestTransitionsAndRestartsReadNoSecret checks that the embedded KMS answers from its view of
// its keys: a transition costs its Secret write and nothing else, and a restart over settled
// keys (a new provider, a new reconciler) reads no key Secret and writes nothing at all.
func TestTransitionsAndRestartsReadNoSecret(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, _ := directReconciler(h)
	names := []string{"a", "b", "c", "d", "e"}
	for _, name := range names {
		h.create(h.cmk(name))
		reconcileOnce(t, r, h, name)
	}

	restarted, w := directReconciler(h) // its provider lists its keys once, as it starts
	w.reset()
	for _, name := range names {
		reconcileOnce(t, restarted, h, name)
		if got := h.get(name); got.Status.Phase != v1alpha1.PhaseEnabled {
			t.Fatalf("%s is %s after the restart", name, got.Status.Phase)
		}
	}
	if got, reads := w.get(), w.secretReads.Load(); got != [3]int64{} || reads != 0 {
		t.Errorf("a restart over %d settled keys wrote [status, object, secret] = %v and read Secrets %d times, want nothing",
			len(names), got, reads)
	}

	for _, change := range []map[string]any{{"enabled": false}, {"deletionScheduled": true}, {"deletionScheduled": false}, {"enabled": true}} {
		for _, name := range names {
			h.patch(name, change)
			w.reset()
			reconcileOnce(t, restarted, h, name)
			if got, reads := w.get(), w.secretReads.Load(); got != [3]int64{1, 0, 1} || reads != 0 {
				t.Errorf("%s, %v: wrote [status, object, secret] = %v and read Secrets %d times, want [1 0 1] and none",
					name, change, got, reads)
			}
		}
	}
}

// recordingEvents keeps the events a direct reconciler sends.
type recordingEvents struct {
	mu     sync.Mutex
	events []string // "type reason: note"
}

func (e *recordingEvents) Eventf(_ runtime.Object, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, eventtype+" "+reason+": "+fmt.Sprintf(note, args...))
}

func (e *recordingEvents) reasons() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.events {
		out = append(out, strings.SplitN(strings.SplitN(ev, " ", 2)[1], ":", 2)[0])
	}
	return out
}

func (e *recordingEvents) has(reason string) bool { return slices.Contains(e.reasons(), reason) }

// reconcileOnce runs one reconcile of a resource with a direct reconciler, which must not fail.
func reconcileOnce(t testing.TB, r *CustomerMasterKeyReconciler, h *harness, name string) reconcile.Result {
	t.Helper()
	res, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: client.ObjectKey{Namespace: h.ns, Name: name}})
	if err != nil {
		t.Fatalf("reconciling %s: %v", name, err)
	}
	return res
}

// TestCreateAttemptIsNotEarlierThanTheResource checks an annotation edited to an earlier time
// never dates the attempt before the resource was created.
func TestCreateAttemptIsNotEarlierThanTheResource(t *testing.T) {
	t.Parallel()
	created := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	c := &v1alpha1.CustomerMasterKey{}
	c.CreationTimestamp = metav1.NewTime(created)
	c.Annotations = map[string]string{CreateAttemptAnnotation: "2020-01-01T00:00:00.000Z"}
	if got := createAttempt(c); !got.Equal(created) {
		t.Errorf("an attempt recorded as 2020 on a resource created %v: %v", created, got)
	}
	c.Annotations[CreateAttemptAnnotation] = "2026-11-27T10:00:05.250Z"
	if got := createAttempt(c); !got.Equal(created.Add(5250 * time.Millisecond)) {
		t.Errorf("an attempt recorded after creation: %v", got)
	}
}
