package controllers

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
)

type failEnable struct {
	*embedded.Provider
	fail atomic.Bool
}

func (f *failEnable) Enable(ctx context.Context, id string) error {
	if f.fail.Load() {
		return errors.New("503 service unavailable")
	}
	return f.Provider.Enable(ctx, id)
}

func drain(rec *events.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func conds(c *v1alpha1.CustomerMasterKey) string {
	var b strings.Builder
	for _, x := range c.Status.Conditions {
		b.WriteString(x.Type + "=" + string(x.Status) + "/" + x.Reason + " ")
	}
	return b.String()
}

// TestReadyNotKeptAgainstTheKMS: a settled key is disabled outside Kubernetes and the Enable
// that would put it back fails (a KMS 503, for as long as it lasts): Ready does not go on
// saying the key is as the spec asks.
func TestReadyNotKeptAgainstTheKMS(t *testing.T) {
	h := newHarness(t)
	rec := events.NewFakeRecorder(100)
	f := &failEnable{Provider: h.kms}
	r := &CustomerMasterKeyReconciler{Client: env.Client, KMS: f, Recorder: rec, Clock: h.clock, SyncPeriod: DefaultSyncPeriod, ImportRetry: DefaultImportRetry}
	h.create(h.cmk("d"))
	c := reconcileAll(t, r, h, "d")
	if err := h.kms.Disable(context.Background(), c.Status.KeyID); err != nil {
		t.Fatal(err)
	}
	f.fail.Store(true)
	for i := 0; i < 3; i++ {
		if _, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: client.ObjectKey{Namespace: h.ns, Name: "d"}}); err == nil {
			t.Errorf("reconcile %d with a failing Enable: no error", i)
		}
	}
	c = h.get("d")
	ready := meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionReady)
	if ready.Status == metav1.ConditionTrue || c.Status.Phase != v1alpha1.PhaseDisabled ||
		meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionReconciling) == nil {
		t.Errorf("after drift and a failing Enable: phase %s, %s; want Disabled, Ready=False and Reconciling", c.Status.Phase, conds(c))
	}
}

// TestDeletedEventOnConflict: the key is deleted outside Kubernetes; the reconcile that finds
// it gone loses its status write to an edit of the resource. The key's facts are written all
// the same, and the Deleted event is sent once.
func TestDeletedEventOnConflict(t *testing.T) {
	h := newHarness(t)
	rec := events.NewFakeRecorder(100)
	var arm atomic.Bool
	c := interceptor.NewClient(env.Client, interceptor.Funcs{
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
			if arm.CompareAndSwap(true, false) {
				// Someone edits the resource a moment before the status write.
				bump := client.RawPatch("application/merge-patch+json", []byte(`{"metadata":{"labels":{"edited":"yes"}}}`))
				if err := env.Client.Patch(ctx, &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Namespace: o.GetNamespace(), Name: o.GetName()}}, bump); err != nil {
					return err
				}
			}
			return c.SubResource(sub).Patch(ctx, o, p, opts...)
		},
	})
	r := &CustomerMasterKeyReconciler{Client: c, KMS: h.kms, Recorder: rec, Clock: h.clock, SyncPeriod: DefaultSyncPeriod, ImportRetry: DefaultImportRetry}
	h.create(h.cmk("gone"))
	cm := reconcileAll(t, r, h, "gone")
	drain(rec)
	// A person deletes the key's Secret.
	if err := env.Client.Delete(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.kmsNS, Name: "cmk-" + cm.Status.KeyID}}); err != nil {
		t.Fatal(err)
	}
	// Wait for the view to see it.
	for i := 0; i < 100; i++ {
		if _, err := h.kms.Observe(context.Background(), cm.Status.KeyID); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	arm.Store(true)
	for i := 0; i < 4; i++ {
		_, _ = r.Reconcile(context.Background(), reconcile.Request{NamespacedName: client.ObjectKey{Namespace: h.ns, Name: "gone"}})
	}
	cm = h.get("gone")
	evs := drain(rec)
	n := 0
	for _, e := range evs {
		if strings.Contains(e, " Deleted ") {
			n++
		}
	}
	if n != 1 || cm.Status.Phase != v1alpha1.PhaseDeleted {
		t.Errorf("phase %s; Deleted events: %d of %q, want 1", cm.Status.Phase, n, evs)
	}
}
