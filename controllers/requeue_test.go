package controllers

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
	"github.com/cmk-operator/cmk-operator/internal/planner"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// countingKMS counts how often the reconciler reads keys.
type countingKMS struct {
	*embedded.Provider
	observed atomic.Int64
}

func (c *countingKMS) Observe(ctx context.Context, keyID string) (kms.Key, error) {
	c.observed.Add(1)
	return c.Provider.Observe(ctx, keyID)
}

// importWithExpiry brings an External resource to Enabled with material expiring at expiry.
func (h *harness) importWithExpiry(name string, expiry time.Time) {
	h.t.Helper()
	c := h.waitImportParameters(name, "")
	wrapped, token := wrapFor(h.t, c, randomMaterial(h.t, 32))
	h.putSecret(name+"-material", materialSecret(wrapped, token))
	h.patch(name, map[string]any{"keyMaterial": map[string]any{
		"secretRef": map[string]any{"name": name + "-material"}, "expiresAt": expiry.Format(time.RFC3339)}})
	h.waitPhase(name, v1alpha1.PhaseEnabled)
}

// TestOverdueExpiryIsNotPolled lets imported material pass its expiry while the KMS has not
// removed it yet (Huawei takes up to a day): the key is looked at again with a growing wait,
// never in a loop.
func TestOverdueExpiryIsNotPolled(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	counter := &countingKMS{Provider: h.kms}
	h.start(managerOptions{noReaper: true, provider: func(*embedded.Provider) kms.Provider { return counter }})
	h.create(h.cmk("late", testenv.External))
	h.importWithExpiry("late", h.clock.Now().Add(time.Hour))

	h.clock.Step(time.Hour + time.Second)
	counter.observed.Store(0)
	h.patch("late", map[string]any{"description": "looked at after the expiry"}) // a reconcile, now
	h.eventually("late", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
	})
	time.Sleep(2 * time.Second)
	if n := counter.observed.Load(); n > 8 {
		t.Errorf("%d reads of a key whose expiry passed in 2s, want a handful", n)
	}

	// Directly: the wait after the expiry grows with how late the KMS is.
	r, _ := directReconciler(h)
	r.KMS = counter
	for _, late := range []time.Duration{0, 10 * time.Minute} {
		h.clock.Step(late)
		res := reconcileOnce(t, r, h, "late")
		if least := max(planner.OverdueRecheck, late); res.RequeueAfter < least {
			t.Errorf("%v after the expiry: requeue after %v, want at least %v", late, res.RequeueAfter, least)
		}
	}
}

// rejectsDescriptions is a KMS that refuses every description for good, as a KMS refuses a
// request it will never take.
type rejectsDescriptions struct{ *embedded.Provider }

func (rejectsDescriptions) SetDescription(context.Context, string, string) error {
	return &kms.RejectedError{Reason: "the KMS takes no description"}
}

// TestTerminalFailureKeepsObserving gives a key a failure retrying cannot fix (a description
// the KMS refuses), then schedules its deletion in the KMS behind the operator's back: the slow
// resync still sees the key and cancels the deletion, and the Warning about the failure is sent
// once, also across a restart.
func TestTerminalFailureKeepsObserving(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	refusing := managerOptions{syncPeriod: 300 * time.Millisecond, provider: func(p *embedded.Provider) kms.Provider { return rejectsDescriptions{p} }}
	h.start(refusing)
	h.create(h.cmk("refused"))
	h.waitPhase("refused", v1alpha1.PhaseEnabled)
	h.patch("refused", map[string]any{"description": "refused"})
	c := h.eventually("refused", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(cond(c, v1alpha1.ConditionSynced).Reason).To(Equal(v1alpha1.ReasonRejected))
	})
	if err := h.kms.ScheduleDeletion(context.Background(), c.Status.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func() kms.State { return h.kmsState(c.Status.KeyID) }).WithTimeout(timeout).Should(Equal(kms.StateEnabled),
		"a deletion scheduled outside Kubernetes on a key with a terminal failure was never seen")
	h.stopManager()
	h.kms = h.newProvider(env.Client)
	h.start(refusing)
	time.Sleep(1500 * time.Millisecond)
	if n := countOf(h.events("refused"), v1alpha1.ReasonRejected); n != 1 {
		t.Errorf("%d Rejected warnings over resyncs and a restart, want 1: %v", n, h.events("refused"))
	}
}

// conflicting makes the embedded KMS's first n writes of key Secrets lose a race, as they do
// when the reaper writes the same key at the same moment; left counts down the races still to
// lose.
func conflicting(c client.WithWatch, left *atomic.Int64) client.Client {
	return interceptor.NewClient(c, interceptor.Funcs{
		Update: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.UpdateOption) error {
			if _, ok := o.(*corev1.Secret); ok && left.Add(-1) >= 0 {
				return apierrors.NewConflict(schema.GroupResource{Resource: "secrets"}, o.GetName(), nil)
			}
			return c.Update(ctx, o, opts...)
		},
	})
}

// TestKMSWriteConflictsAreQuiet makes the KMS's writes lose races, a few times (retried inside
// the KMS) and many times (retried by the reconciler): the key gets where the spec asks, with
// no Warning and no Synced=False on the way.
func TestKMSWriteConflictsAreQuiet(t *testing.T) {
	t.Parallel()
	for name, n := range map[string]int64{"Few": 2, "Many": 12} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			h.start(managerOptions{})
			h.create(h.cmk("contended"))
			h.waitPhase("contended", v1alpha1.PhaseEnabled)
			h.stopManager()
			var left atomic.Int64
			left.Store(n)
			h.kms = h.newProvider(conflicting(env.Client, &left))
			h.start(managerOptions{})
			h.patch("contended", map[string]any{"enabled": false})
			c := h.waitPhase("contended", v1alpha1.PhaseDisabled)
			if s := cond(c, v1alpha1.ConditionSynced); s.Reason != v1alpha1.ReasonReconcileSuccess {
				t.Errorf("Synced %+v", s)
			}
			if left.Load() > 0 {
				t.Fatalf("%d of %d write races never happened: the test proves nothing", left.Load(), n)
			}
			if n := countOf(h.events("contended"), v1alpha1.EventFailed); n != 0 {
				t.Errorf("%d Failed warnings for lost write races: %v", n, h.events("contended"))
			}
		})
	}
}

// TestFollowUpActionsInOneReconcile removes a GitOps patch in one go: the deletion is canceled
// and the key enabled in one reconcile, with one status write, and no 1 ms requeue that would
// skip the rate limiter.
func TestFollowUpActionsInOneReconcile(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, w := directReconciler(h)
	h.create(h.cmk("both"))
	reconcileOnce(t, r, h, "both")
	h.patch("both", schedule)
	reconcileOnce(t, r, h, "both")
	h.patch("both", map[string]any{"deletionScheduled": false, "enabled": true})
	w.reset()
	res := reconcileOnce(t, r, h, "both")
	if c := h.get("both"); c.Status.Phase != v1alpha1.PhaseEnabled {
		t.Errorf("after one reconcile: %s, want Enabled", c.Status.Phase)
	}
	if got := w.get(); got != [3]int64{1, 0, 2} {
		t.Errorf("wrote [status, object, secret] = %v, want one status write and two KMS writes", got)
	}
	if res.RequeueAfter < time.Minute {
		t.Errorf("a settled key requeues after %v", res.RequeueAfter)
	}
}
