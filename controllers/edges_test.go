package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
)

// TestFinalizerPutBack takes the finalizer off a resource: it is back at once, not at the next
// resync, so deleting the resource still applies its deletionPolicy.
func TestFinalizerPutBack(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{}) // the default resync, ten minutes
	h.create(h.cmk("held", deletePolicy))
	c := h.waitPhase("held", v1alpha1.PhaseEnabled)
	if err := env.Client.Patch(context.Background(), c, rawMerge(t, map[string]any{"metadata": map[string]any{"finalizers": nil}})); err != nil {
		t.Fatal(err)
	}
	h.eventually("held", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(controllerutil.ContainsFinalizer(c, Finalizer)).To(BeTrue())
	})
	h.delete("held")
	h.waitGone("held")
	if got := h.kmsState(c.Status.KeyID); got != kms.StatePendingDeletion {
		t.Errorf("key is %s after deleting a resource with deletionPolicy Delete", got)
	}
}

// TestUnreadableKeyRecord damages a key's record in the embedded KMS: Ready turns False with a
// reason and what to do, and deleting the resource waits with a message saying how to let it
// go, until the record is restored.
func TestUnreadableKeyRecord(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{syncPeriod: 300 * time.Millisecond})
	h.create(h.cmk("damaged", deletePolicy))
	id := h.waitPhase("damaged", v1alpha1.PhaseEnabled).Status.KeyID
	secret := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.kmsNS, Name: "cmk-" + id}, secret); err != nil {
		t.Fatal(err)
	}
	good := secret.DeepCopy()
	secret.Data["key.json"] = []byte("{not json")
	if err := env.Client.Update(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	c := h.eventually("damaged", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionReady).Reason).To(Equal(v1alpha1.ReasonKeyUnreadable))
	})
	if r := cond(c, v1alpha1.ConditionReady); !strings.Contains(r.Message, "restore Secret "+h.kmsNS+"/cmk-"+id) {
		t.Errorf("Ready: %+v", r)
	}

	h.delete("damaged")
	c = h.eventually("damaged", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionSynced).Message).To(ContainSubstring(`kubectl patch cmk damaged -n ` + h.ns))
	})
	if c.DeletionTimestamp.IsZero() {
		t.Fatal("the resource is not being deleted")
	}
	good.ResourceVersion = ""
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(secret), secret); err != nil {
		t.Fatal(err)
	}
	good.ResourceVersion = secret.ResourceVersion
	if err := env.Client.Update(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	h.waitGone("damaged")
	if got := h.kmsState(id); got != kms.StatePendingDeletion {
		t.Errorf("key is %s once its record was restored, want PendingDeletion", got)
	}
}

// blockingDisable holds Disable until the reconcile's context ends, as a KMS call in flight
// when the manager stops.
type blockingDisable struct {
	*embedded.Provider
	entered chan struct{}
}

func (b blockingDisable) Disable(ctx context.Context, _ string) error {
	close(b.entered)
	<-ctx.Done()
	return ctx.Err()
}

// TestShutdownIsQuiet stops the manager while a KMS call is in flight: no Failed warning, no
// reconcile error in the log, and the next start finishes the work.
func TestShutdownIsQuiet(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("interrupted"))
	h.waitPhase("interrupted", v1alpha1.PhaseEnabled)
	h.stopManager()

	logs := &syncBuffer{}
	block := blockingDisable{Provider: h.kms, entered: make(chan struct{})}
	h.start(managerOptions{logs: logs, provider: func(*embedded.Provider) kms.Provider { return block }})
	h.patch("interrupted", map[string]any{"enabled": false})
	<-block.entered
	h.stopManager()
	if strings.Contains(string(logs.Bytes()), "Reconciler error") || strings.Contains(string(logs.Bytes()), "context canceled") {
		t.Errorf("a stop reported failures:\n%s", logs.Bytes())
	}
	h.start(managerOptions{})
	h.waitPhase("interrupted", v1alpha1.PhaseDisabled)
	if n := countOf(h.events("interrupted"), v1alpha1.EventFailed); n != 0 {
		t.Errorf("%d Failed warnings for a stop: %v", n, h.events("interrupted"))
	}
}

// TestGoneBeforeFinalizerIsQuiet deletes a resource between the reconcile's read and its
// finalizer patch (kubectl apply then delete at once): nothing was made for it, and nothing is
// reported as an error.
func TestGoneBeforeFinalizerIsQuiet(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, _ := directReconciler(h)
	r.Client = interceptor.NewClient(withoutWatch{r.Client}, interceptor.Funcs{
		Patch: func(ctx context.Context, c client.WithWatch, o client.Object, p client.Patch, opts ...client.PatchOption) error {
			if err := c.Delete(ctx, o); err != nil {
				return err
			}
			return c.Patch(ctx, o, p, opts...)
		},
	})
	h.create(h.cmk("fleeting"))
	res, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: client.ObjectKey{Namespace: h.ns, Name: "fleeting"}})
	if err != nil || res.RequeueAfter != 0 {
		t.Errorf("reconciling a resource deleted before its finalizer: %+v, %v", res, err)
	}
	if n := h.keySecrets(); n != 0 {
		t.Errorf("%d keys made for a resource deleted before its finalizer", n)
	}
}
