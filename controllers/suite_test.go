package controllers

import (
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// Every test here runs against a real kube-apiserver and etcd (see internal/testenv).
var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

const timeout = 30 * time.Second

// harness is one test's world: a namespace for its resources, a KMS namespace for its
// embedded provider, a fake clock both share, and optionally a running manager.
type harness struct {
	t     testing.TB
	ns    string
	kmsNS string
	clock *clocktesting.FakeClock
	kms   *embedded.Provider
	stop  func()
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	suffix := string(uuid.NewUUID())[:8]
	h := &harness{
		t:     t,
		ns:    "test-" + suffix,
		kmsNS: "kms-" + suffix,
		clock: clocktesting.NewFakeClock(time.Now().UTC().Truncate(time.Second)),
	}
	for _, ns := range []string{h.ns, h.kmsNS} {
		if err := env.CreateNamespace(context.Background(), ns); err != nil {
			t.Fatal(err)
		}
	}
	h.kms = h.newProvider(env.Client)
	return h
}

func (h *harness) newProvider(c client.Client) *embedded.Provider {
	h.t.Helper()
	p, err := embedded.New(h.t.Context(), kms.Env{Client: c, Namespace: h.kmsNS, Clock: h.clock, Log: logr.Discard()}, embedded.Options{})
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

// managerOptions change how a harness runs its manager.
type managerOptions struct {
	syncPeriod  time.Duration
	importRetry time.Duration
	// client, when set, wraps the manager's client (to inject failures).
	wrap func(client.Client) client.Client
	// logs, when set, receives the manager's and reconciler's logs.
	logs io.Writer
	// provider, when set, wraps the harness's provider (to delay or fail KMS calls).
	provider func(*embedded.Provider) kms.Provider
	// noReaper leaves the embedded KMS's reaper off, as a KMS that is late to act.
	noReaper bool
	// config, when set, is who the manager runs as (see tenancy_test.go); else the admin.
	config *rest.Config
	// namespaces are watched besides the harness's own.
	namespaces []string
	// sweep, when set, runs the orphan sweep at start and at this interval.
	sweep time.Duration
}

// start runs the operator's manager (NewManager, as main does) with the harness's provider and
// clock until the test ends or stopManager is called. Its cache sees only the test's namespace.
func (h *harness) start(opts managerOptions) {
	h.t.Helper()
	logger := logr.Discard()
	if opts.logs != nil {
		logger = zap.New(zap.WriteTo(opts.logs), zap.UseDevMode(true))
	}
	cfg := env.Config
	if opts.config != nil {
		cfg = opts.config
	}
	var wrapKMS func(kms.Provider) kms.Provider
	if opts.provider != nil {
		wrapKMS = func(kms.Provider) kms.Provider { return opts.provider(h.kms) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := NewManager(ctx, cfg, ManagerOptions{
		KMS: h.kms, NoBackground: opts.noReaper, WrapKMS: wrapKMS,
		Namespaces: append([]string{h.ns}, opts.namespaces...), Logger: logger,
		WrapClient: opts.wrap, Clock: h.clock, SyncPeriod: opts.syncPeriod, ImportRetry: opts.importRetry,
		OrphanSweepInterval: opts.sweep, SkipNameValidation: true,
	})
	if err != nil {
		cancel()
		h.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("manager: %v", err)
		}
		h.stop = nil
	}
	h.t.Cleanup(func() {
		if h.stop != nil {
			h.stop()
		}
	})
}

func (h *harness) stopManager() { h.stop() }

// losingStatusWrites makes the manager's status writes of a resource fail with a 503 whenever
// lose says so, as an apiserver restart, or the manager dying, at that moment would.
func losingStatusWrites(lose func(*v1alpha1.CustomerMasterKey) bool) func(client.Client) client.Client {
	return func(c client.Client) client.Client {
		return interceptor.NewClient(withoutWatch{c}, interceptor.Funcs{
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				if cmk, ok := o.(*v1alpha1.CustomerMasterKey); ok && sub == "status" && lose(cmk) {
					return apierrors.NewServiceUnavailable("injected: the status write was lost")
				}
				return c.SubResource(sub).Patch(ctx, o, p, opts...)
			},
		})
	}
}

// cmk returns a resource of the test's namespace with every default the apiserver would set.
func (h *harness) cmk(name string, mutate ...func(*v1alpha1.CustomerMasterKey)) *v1alpha1.CustomerMasterKey {
	return testenv.Key(h.ns, name, mutate...)
}

func (h *harness) create(objs ...*v1alpha1.CustomerMasterKey) {
	h.t.Helper()
	for _, o := range objs {
		if err := env.Client.Create(context.Background(), o); err != nil {
			h.t.Fatalf("creating %s: %v", o.Name, err)
		}
	}
}

func (h *harness) get(name string) *v1alpha1.CustomerMasterKey {
	h.t.Helper()
	c := &v1alpha1.CustomerMasterKey{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: h.ns, Name: name}, c); err != nil {
		h.t.Fatal(err)
	}
	return c
}

// patch applies a JSON merge patch to the spec, as `kubectl patch --type merge` does.
func (h *harness) patch(name string, spec map[string]any) {
	h.t.Helper()
	raw := mustJSON(h.t, map[string]any{"spec": spec})
	c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns}}
	if err := env.Client.Patch(context.Background(), c, client.RawPatch("application/merge-patch+json", raw)); err != nil {
		h.t.Fatalf("patching %s with %s: %v", name, raw, err)
	}
}

var (
	schedule = map[string]any{"enabled": false, "deletionScheduled": true}
	cancel   = map[string]any{"deletionScheduled": false}
	enable   = map[string]any{"enabled": true}
)

// eventually waits until the resource satisfies check.
func (h *harness) eventually(name string, check func(g Gomega, c *v1alpha1.CustomerMasterKey)) *v1alpha1.CustomerMasterKey {
	h.t.Helper()
	return eventuallyAs(h.t, env.Client, client.ObjectKey{Namespace: h.ns, Name: name}, check)
}

// eventuallyAs waits until the resource, as reader sees it, satisfies check.
func eventuallyAs(t testing.TB, reader client.Reader, key client.ObjectKey, check func(g Gomega, c *v1alpha1.CustomerMasterKey)) *v1alpha1.CustomerMasterKey {
	t.Helper()
	var got *v1alpha1.CustomerMasterKey
	NewWithT(t).Eventually(func(g Gomega) {
		c := &v1alpha1.CustomerMasterKey{}
		g.Expect(reader.Get(context.Background(), key, c)).To(Succeed())
		check(g, c)
		got = c
	}).WithTimeout(timeout).WithPolling(20 * time.Millisecond).Should(Succeed())
	return got
}

// waitPhase waits until the resource reports phase for its current generation.
func (h *harness) waitPhase(name string, phase v1alpha1.Phase) *v1alpha1.CustomerMasterKey {
	h.t.Helper()
	return h.eventually(name, inPhase(phase))
}

// inPhase checks the resource reports phase for its current generation.
func inPhase(phase v1alpha1.Phase) func(g Gomega, c *v1alpha1.CustomerMasterKey) {
	return func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation), "observedGeneration")
		g.Expect(c.Status.Phase).To(Equal(phase), "phase")
	}
}

// cond returns a condition by type, or a zero one.
func cond(c *v1alpha1.CustomerMasterKey, typ string) metav1.Condition {
	if found := meta.FindStatusCondition(c.Status.Conditions, typ); found != nil {
		return *found
	}
	return metav1.Condition{}
}

// keySecrets counts the keys in the harness's KMS.
func (h *harness) keySecrets() int {
	h.t.Helper()
	var list corev1.SecretList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(h.kmsNS), client.HasLabels{"kms.cmk.io/embedded-key"}); err != nil {
		h.t.Fatal(err)
	}
	return len(list.Items)
}

// events returns the reasons of the events about a resource, oldest first.
func (h *harness) events(name string) []string { return h.eventsIn(h.ns, name) }

// kmsState is the key's state straight from the KMS.
func (h *harness) kmsState(keyID string) kms.State {
	h.t.Helper()
	k, err := h.kms.Observe(context.Background(), keyID)
	if err != nil {
		h.t.Fatal(err)
	}
	return k.State
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func rawMerge(t testing.TB, v any) client.Patch {
	return client.RawPatch("application/merge-patch+json", mustJSON(t, v))
}
