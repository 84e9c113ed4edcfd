// Package crash kills the manager (SIGKILL) at random points while it makes keys, round after
// round, with resources applied, deleted and stripped of their finalizer meanwhile, in a
// control plane of its own; then it starts the manager once more and checks that after its
// orphan sweep every key whose resource is gone follows the deletionPolicy recorded with it,
// and that the keys of a second cluster on the same KMS are untouched. It runs the real
// manager binary, for each provider: the embedded KMS and Huawei (the stand-in).
package crash

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/go-logr/logr"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/controllers"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
	"github.com/cmk-operator/cmk-operator/internal/kms/huaweicloud"
	"github.com/cmk-operator/cmk-operator/internal/kms/huaweicloud/standin"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// rounds of kills per provider, and resources applied each round. CMK_CRASH_ROUNDS and
// CMK_CRASH_SEED search longer or replay.
const (
	defaultRounds = 8
	perRound      = 6
)

// kmsUnderTest is one provider: the flags and environment the manager runs it with, the test's
// own client of the same KMS, and every key it holds.
type kmsUnderTest struct {
	args, environ []string
	provider      kms.Provider
	keyIDs        func() []string
}

func TestCrashLeavesNoOrphan(t *testing.T) {
	bin := buildManager(t)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.KubeConfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CMK_CRASH_SEED"); s != "" {
		_, _ = fmt.Sscan(s, &seed)
	}
	rounds := defaultRounds
	if s := os.Getenv("CMK_CRASH_ROUNDS"); s != "" {
		_, _ = fmt.Sscan(s, &rounds)
	}
	t.Logf("seed %d (CMK_CRASH_SEED=%d replays it), %d rounds", seed, seed, rounds)
	for i, provider := range []struct {
		name string
		make func(t *testing.T) kmsUnderTest
	}{{"embedded", embeddedKMS}, {"huaweicloud", huaweiKMS}} {
		t.Run(provider.name, func(t *testing.T) {
			c := &crashes{t: t, rng: rand.New(rand.NewPCG(seed, uint64(i))), bin: bin, kubeconfig: kubeconfig,
				ns: "crash-" + provider.name, kms: provider.make(t), specs: map[string]spec{}}
			c.run(rounds)
		})
	}
}

// buildManager builds the manager as the image does (main.go), into the test's directory.
func buildManager(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "manager")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/cmk-operator/cmk-operator")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func embeddedKMS(t *testing.T) kmsUnderTest {
	const ns = "kms-crash"
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	p, err := embedded.New(t.Context(), kms.Env{Client: env.Client, Namespace: ns, Clock: clock.RealClock{}, Log: logr.Discard()}, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return kmsUnderTest{args: []string{"--kms-provider=embedded", "--kms-namespace=" + ns}, provider: p,
		keyIDs: func() []string {
			var list corev1.SecretList
			if err := env.Client.List(context.Background(), &list, client.InNamespace(ns), client.HasLabels{"kms.cmk.io/embedded-key"}); err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, s := range list.Items {
				ids = append(ids, strings.TrimPrefix(s.Name, "cmk-"))
			}
			return ids
		}}
}

func huaweiKMS(t *testing.T) kmsUnderTest {
	s := standin.StartOn(time.Now(), nil)
	t.Cleanup(s.Close)
	s.SetActivation(0)
	const region = "cn-north-4"
	environ := []string{"HUAWEICLOUD_SDK_AK=" + s.AK, "HUAWEICLOUD_SDK_SK=" + s.SK}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	p, err := huaweicloud.New(huaweicloud.Config{Region: region, ProjectID: s.ProjectID, Endpoint: s.URL, QPS: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return kmsUnderTest{args: []string{"--kms-provider=huaweicloud", "--huaweicloud-region=" + region, "--huaweicloud-project-id=" + s.ProjectID,
		"--huaweicloud-endpoint=" + s.URL, "--kms-qps=1000"}, environ: environ, provider: p, keyIDs: s.KeyIDs}
}

// spec is what the test last asked of a resource, and what became of it.
type spec struct {
	policy   v1alpha1.DeletionPolicy
	days     int32
	deleted  bool // deleted with its finalizer: the operator applies the policy
	stripped bool // its finalizer removed by hand, the resource gone at once
}

// fate says how the resource went.
func (s spec) fate() string {
	if s.stripped {
		return "with its finalizer stripped"
	}
	return "through its finalizer"
}

type crashes struct {
	t          *testing.T
	rng        *rand.Rand
	bin        string
	kubeconfig string
	ns         string
	kms        kmsUnderTest
	specs      map[string]spec
	manager    *manager
}

// manager is one run of the manager process.
type manager struct {
	cmd *exec.Cmd
	log *output
}

// output is the manager's output, written by the process's copier and read by the test.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

func (c *crashes) start() {
	c.t.Helper()
	args := append([]string{"--orphan-sweep-interval=1h", "--metrics-bind-address=0", "--health-probe-bind-address=0", "--zap-devel=false"}, c.kms.args...)
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(append(os.Environ(), "KUBECONFIG="+c.kubeconfig), c.kms.environ...)
	log := &output{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.manager = &manager{cmd: cmd, log: log}
}

// kill ends the manager with SIGKILL: no deferred call, no last status write.
func (c *crashes) kill() {
	_ = c.manager.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.manager.cmd.Wait()
}

func (c *crashes) run(rounds int) {
	ctx := context.Background()
	if err := env.CreateNamespace(ctx, c.ns); err != nil {
		c.t.Fatal(err)
	}
	cluster, install := c.identity()
	foreign := c.foreignKeys(cluster, install)
	var kills []string // of each round, how many of its keys status recorded just before the kill
	for round := range rounds {
		c.start()
		for i := range perRound {
			c.apply(fmt.Sprintf("r%02d-%d", round, i))
		}
		// Killed during creation: the keys of this round are being made, in part or not at all.
		time.Sleep(time.Duration(c.rng.IntN(1500)) * time.Millisecond)
		c.deleteSome(0.2) // applied and deleted while the manager works
		recorded := c.recorded(round)
		c.kill()
		kills = append(kills, fmt.Sprintf("%d/%d", recorded, perRound))
		c.deleteSome(0.3) // deleted while no manager runs; some stripped of their finalizer
	}
	c.t.Logf("keys recorded when the manager was killed, by round: %v", kills)
	c.start()
	defer c.kill()
	c.settle()
	c.waitForSweep()
	c.check(foreign)
	c.cleanUp()
}

// recorded counts the resources of a round whose status names their key.
func (c *crashes) recorded(round int) int {
	var list v1alpha1.CustomerMasterKeyList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(c.ns)); err != nil {
		c.t.Fatal(err)
	}
	n := 0
	for _, k := range list.Items {
		if strings.HasPrefix(k.Name, fmt.Sprintf("r%02d-", round)) && k.Status.KeyID != "" {
			n++
		}
	}
	return n
}

// identity is the cluster's ID and the install's, as the operator records them.
func (c *crashes) identity() (cluster, install string) {
	ns := &corev1.Namespace{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: "kube-system"}, ns); err != nil {
		c.t.Fatal(err)
	}
	crd := &metav1.PartialObjectMetadata{}
	crd.SetGroupVersionKind(metav1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	crd.APIVersion = "apiextensions.k8s.io/v1"
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: controllers.CRDName}, crd); err != nil {
		c.t.Fatal(err)
	}
	return string(ns.UID), kms.InstallID(string(crd.UID))
}

// foreignKeys makes, in the same KMS, keys of a second cluster whose owners (in this namespace,
// with these names) do not exist here, recorded with deletionPolicy Delete: orphans, if this
// cluster's sweep took them for its own. It returns their states.
func (c *crashes) foreignKeys(cluster, install string) map[string]kms.State {
	other := string(uuid.NewUUID())
	if other == cluster {
		c.t.Fatal("the second cluster has this one's ID")
	}
	states := map[string]kms.State{}
	for i := range 3 {
		uid := string(uuid.NewUUID())
		k, err := c.kms.provider.Create(context.Background(), kms.CreateRequest{Alias: fmt.Sprintf("k8s/%s/foreign-%d", c.ns, i), KeySpec: "AES_256",
			KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: uid, Owner: kms.Owner{Namespace: c.ns, Name: fmt.Sprintf("foreign-%d", i), UID: uid},
			Provenance: kms.Provenance{Cluster: other, Install: install, DeletionPolicy: kms.PolicyDelete, PendingDays: 7}})
		if err != nil {
			c.t.Fatal(err)
		}
		states[k.ID] = k.State
	}
	return states
}

func (c *crashes) apply(name string) {
	s := spec{policy: v1alpha1.DeletionPolicyRetain, days: int32(7 + c.rng.IntN(24))}
	if c.rng.IntN(2) == 0 {
		s.policy = v1alpha1.DeletionPolicyDelete
	}
	cmk := testenv.Key(c.ns, name, func(k *v1alpha1.CustomerMasterKey) {
		k.Spec.DeletionPolicy, k.Spec.PendingDays = s.policy, s.days
	})
	if err := env.Client.Create(context.Background(), cmk); err != nil {
		c.t.Fatal(err)
	}
	c.specs[name] = s
}

// deleteSome deletes each resource still there with probability p, and takes the finalizer
// off half of those it deletes (a careless operator's `kubectl patch` to get a resource unstuck).
func (c *crashes) deleteSome(p float64) {
	for name, s := range c.specs {
		if s.deleted || s.stripped || c.rng.Float64() >= p {
			continue
		}
		obj := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: name}}
		if err := env.Client.Delete(context.Background(), obj); client.IgnoreNotFound(err) != nil {
			c.t.Fatal(err)
		}
		s.deleted = true
		if c.rng.IntN(2) == 0 {
			err := env.Client.Patch(context.Background(), obj, client.RawPatch("application/merge-patch+json", []byte(`{"metadata":{"finalizers":null}}`)))
			if client.IgnoreNotFound(err) != nil {
				c.t.Fatal(err)
			}
			s.deleted, s.stripped = false, true
		}
		c.specs[name] = s
	}
}

// settle waits until every resource deleted is gone and every other one is Ready.
func (c *crashes) settle() {
	c.t.Helper()
	NewWithT(c.t).Eventually(func(g Gomega) {
		var list v1alpha1.CustomerMasterKeyList
		g.Expect(env.Client.List(context.Background(), &list, client.InNamespace(c.ns))).To(Succeed())
		for _, k := range list.Items {
			g.Expect(k.DeletionTimestamp).To(BeNil(), "%s is still being deleted", k.Name)
			ready := metav1.Condition{}
			for _, cond := range k.Status.Conditions {
				if cond.Type == v1alpha1.ConditionReady {
					ready = cond
				}
			}
			g.Expect(ready.Status).To(Equal(metav1.ConditionTrue), "%s: %s %s", k.Name, ready.Reason, ready.Message)
		}
	}).WithTimeout(2*time.Minute).WithPolling(200*time.Millisecond).Should(Succeed(), c.logTail)
}

// waitForSweep waits for the sweep the last manager ran at its start.
func (c *crashes) waitForSweep() {
	c.t.Helper()
	NewWithT(c.t).Eventually(func() string { return c.manager.log.String() }).WithTimeout(time.Minute).
		Should(ContainSubstring("Orphan sweep done"), c.logTail)
}

func (c *crashes) logTail() string {
	out := c.manager.log.String()
	return out[max(0, len(out)-4000):]
}

// check holds the outcome: each key whose resource is gone follows what the resource asked
// (Delete: pending deletion after its pendingDays; Retain: not pending deletion), one key at
// most per resource, and the second cluster's keys as they were.
func (c *crashes) check(foreign map[string]kms.State) {
	ctx := context.Background()
	byAlias := map[string]int{}
	orphans, unmarked := 0, 0
	rec, _ := kms.As[kms.Recorder](c.kms.provider)
	for _, id := range c.kms.keyIDs() {
		k, err := c.kms.provider.Observe(ctx, id)
		if err != nil {
			c.t.Fatal(err)
		}
		if was, ok := foreign[id]; ok {
			if k.State != was {
				c.t.Errorf("key %s of another cluster is %s, was %s", id, k.State, was)
			}
			continue
		}
		name := strings.TrimPrefix(k.Alias, "k8s/"+c.ns+"/")
		s, ok := c.specs[name]
		if !ok {
			c.t.Errorf("key %s has alias %q, of no resource the test made", id, k.Alias)
			continue
		}
		byAlias[k.Alias]++
		err = env.Client.Get(ctx, client.ObjectKey{Namespace: c.ns, Name: name}, &v1alpha1.CustomerMasterKey{})
		if err == nil {
			continue // its resource lives: the reconciler answers for it
		}
		if !apierrors.IsNotFound(err) {
			c.t.Fatal(err)
		}
		orphans++
		_, prov, err := rec.Provenance(ctx, id)
		if err != nil {
			c.t.Fatal(err)
		}
		if prov.IsZero() && s.stripped {
			// Made and never marked (Huawei's create is two calls, and the kill fell between
			// them), its resource gone without a finalizer: nothing in the KMS ties it to a
			// resource, so no sweep can see it; Kubernetes has nothing left to tell either.
			unmarked++
			c.t.Logf("key %s of %s: made, never marked, its resource stripped of its finalizer", id, name)
			continue
		}
		switch {
		case prov.IsZero():
			c.t.Errorf("key %s of %s, deleted with its finalizer, records no provenance", id, name)
		case s.policy == v1alpha1.DeletionPolicyDelete && k.State != kms.StatePendingDeletion:
			c.t.Errorf("key %s of %s (gone %s, deletionPolicy Delete) is %s; recorded %+v", id, name, s.fate(), k.State, prov)
		case s.policy == v1alpha1.DeletionPolicyDelete && k.DeletionDate.Before(time.Now().Add(time.Duration(s.days)*24*time.Hour-25*time.Hour)):
			c.t.Errorf("key %s of %s is deleted on %v, sooner than its pendingDays %d", id, name, k.DeletionDate, s.days)
		case s.policy == v1alpha1.DeletionPolicyRetain && k.State == kms.StatePendingDeletion:
			c.t.Errorf("key %s of %s (gone, deletionPolicy Retain) is pending deletion", id, name)
		}
	}
	for alias, n := range byAlias {
		if n > 1 {
			c.t.Errorf("%d keys for %s", n, alias)
		}
	}
	stripped := 0
	for _, s := range c.specs {
		if s.stripped {
			stripped++
		}
	}
	c.t.Logf("%d resources, %d stripped of their finalizer; %d keys whose resource is gone, %d of them never marked", len(c.specs), stripped, orphans, unmarked)
	if stripped > 0 && orphans == 0 {
		c.t.Error("no key outlived its resource: the rounds tested nothing of the sweep")
	}
}

// cleanUp deletes the resources left, with the manager still running, so the next provider's
// manager finds none of this one's.
func (c *crashes) cleanUp() {
	ctx := context.Background()
	if err := env.Client.DeleteAllOf(ctx, &v1alpha1.CustomerMasterKey{}, client.InNamespace(c.ns)); err != nil {
		c.t.Fatal(err)
	}
	NewWithT(c.t).Eventually(func(g Gomega) {
		var list v1alpha1.CustomerMasterKeyList
		g.Expect(env.Client.List(ctx, &list, client.InNamespace(c.ns))).To(Succeed())
		g.Expect(list.Items).To(BeEmpty())
	}).WithTimeout(time.Minute).Should(Succeed(), c.logTail)
}
