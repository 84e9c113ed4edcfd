package controllers

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
)

// gatedObserve holds the reconcile's read of the key, once armed, until released.
type gatedObserve struct {
	*embedded.Provider
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (g *gatedObserve) Observe(ctx context.Context, id string) (kms.Key, error) {
	if g.armed.CompareAndSwap(true, false) {
		close(g.entered)
		<-g.release
	}
	return g.Provider.Observe(ctx, id)
}

// TestConsumerDuringReconcile: a PersistentVolume naming the key appears while the reconcile
// reads the key from the KMS, after it counted the consumers: they are counted again right
// before the disable, which is held.
func TestConsumerDuringReconcile(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	g := &gatedObserve{Provider: h.kms, entered: make(chan struct{}), release: make(chan struct{})}
	h.start(managerOptions{provider: func(*embedded.Provider) kms.Provider { return g }})
	h.create(h.cmk("db"))
	id := h.waitPhase("db", v1alpha1.PhaseEnabled).Status.KeyID
	g.armed.Store(true)
	h.patch("db", map[string]any{"enabled": false})
	<-g.entered
	pv := encryptedVolume("pv-"+h.ns, id)
	createAll(t, pv)
	t.Cleanup(func() { deleteAll(t, pv) })
	time.Sleep(time.Second) // the informer has delivered the PV to the index by now
	close(g.release)
	time.Sleep(2 * time.Second)
	if st := h.kmsState(id); st != kms.StateEnabled {
		t.Errorf("a PV created during the reconcile, indexed before the Disable call, did not stop it: key %s", st)
	}
}
