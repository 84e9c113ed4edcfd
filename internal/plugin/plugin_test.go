package plugin

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

// These tests run kubectl cmk in-process against a real apiserver with the operator running.
var (
	env        *testenv.Env
	kubeconfig string
)

func TestMain(m *testing.M) {
	testenv.Main(m, &env, func(e *testenv.Env) error {
		dir, err := os.MkdirTemp("", "kubectl-cmk-test")
		if err != nil {
			return err
		}
		kubeconfig = filepath.Join(dir, "kubeconfig")
		return e.KubeConfig(kubeconfig)
	})
}

// kubectlCmk runs the plugin as `kubectl cmk ARGS...` would.
func kubectlCmk(t testing.TB, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := NewCommand(genericiooptions.IOStreams{Out: &out, ErrOut: &errOut})
	cmd.SetArgs(append([]string{"--kubeconfig", kubeconfig}, args...))
	err := cmd.ExecuteContext(context.Background())
	return out.String() + errOut.String(), err
}

// namespaces numbers the tests' namespaces; atomic, as the tests run in parallel.
var namespaces atomic.Int64

// namespace makes a fresh namespace with the operator running for it.
func namespace(t testing.TB) string {
	t.Helper()
	ns := fmt.Sprintf("plugin-%d", namespaces.Add(1))
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	operator.Start(t, env, ns, "kms-"+ns)
	return ns
}

func create(t testing.TB, keys ...*v1alpha1.CustomerMasterKey) {
	t.Helper()
	for _, k := range keys {
		if err := env.Client.Create(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
}

// phases waits until every key in ns is settled and returns name → phase.
func settled(t testing.TB, ns string) map[string]v1alpha1.Phase {
	t.Helper()
	got := map[string]v1alpha1.Phase{}
	NewWithT(t).Eventually(func(g Gomega) {
		var list v1alpha1.CustomerMasterKeyList
		g.Expect(env.Client.List(context.Background(), &list, client.InNamespace(ns))).To(Succeed())
		for _, c := range list.Items {
			g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation), c.Name)
			g.Expect(c.Status.Phase).NotTo(BeEmpty(), c.Name)
			got[c.Name] = c.Status.Phase
		}
	}).WithTimeout(2 * time.Minute).WithPolling(100 * time.Millisecond).Should(Succeed())
	return got
}

func countPhases(m map[string]v1alpha1.Phase) map[v1alpha1.Phase]int {
	n := map[v1alpha1.Phase]int{}
	for _, p := range m {
		n[p]++
	}
	return n
}

// TestManyKeysByLabel schedules and cancels the deletion of 200 keys by label, waiting for
// each; one of them is an External key without material, which comes back PendingImport.
func TestManyKeysByLabel(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	team := map[string]string{"team": "payments"}
	for i := range 199 {
		create(t, testenv.Key(ns, fmt.Sprintf("key-%03d", i), testenv.Labels(team)))
	}
	create(t, testenv.Key(ns, "byok", testenv.Labels(team), testenv.External))
	create(t, testenv.Key(ns, "bystander", testenv.Labels(map[string]string{"team": "other"})))
	settled(t, ns)

	out, err := kubectlCmk(t, "-n", ns, "schedule-deletion", "-l", "team=payments", "--wait")
	if err != nil || !strings.Contains(out, "200 changed") || !strings.Contains(out, "Enabled → PendingDeletion") {
		t.Fatalf("schedule-deletion: %v\n%s", err, tail(out))
	}
	if n := countPhases(settled(t, ns)); n[v1alpha1.PhasePendingDeletion] != 200 || n[v1alpha1.PhaseEnabled] != 1 {
		t.Errorf("after schedule-deletion: %v", n)
	}

	out, err = kubectlCmk(t, "-n", ns, "cancel-deletion", "-l", "team=payments", "--wait")
	if err != nil || !strings.Contains(out, "200 changed") {
		t.Fatalf("cancel-deletion: %v\n%s", err, tail(out))
	}
	if !strings.Contains(out, "PendingDeletion → PendingImport") {
		t.Errorf("the table does not show the External key coming back PendingImport:\n%s", tail(out))
	}
	if !strings.Contains(out, "PendingDeletion → Disabled") || !strings.Contains(out, "patched 200 of 200 keys") {
		t.Errorf("the table or progress is missing:\n%s", tail(out))
	}
	if n := countPhases(settled(t, ns)); n[v1alpha1.PhaseDisabled] != 199 || n[v1alpha1.PhasePendingImport] != 1 || n[v1alpha1.PhaseEnabled] != 1 {
		t.Errorf("after cancel-deletion: %v", n)
	}
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 12 {
		lines = append(lines[:4], append([]string{"..."}, lines[len(lines)-8:]...)...)
	}
	return strings.Join(lines, "\n")
}

// TestDryRunChangesNothing checks that --dry-run reports the change and makes none.
func TestDryRunChangesNothing(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	staging := testenv.Labels(map[string]string{"env": "staging"})
	create(t, testenv.Key(ns, "a", staging), testenv.Key(ns, "b", staging))
	settled(t, ns)
	before := map[string]int64{}
	var list v1alpha1.CustomerMasterKeyList
	_ = env.Client.List(context.Background(), &list, client.InNamespace(ns))
	for _, c := range list.Items {
		before[c.Name] = c.Generation
	}
	out, err := kubectlCmk(t, "-n", ns, "schedule-deletion", "-l", "env=staging", "--dry-run", "--pending-days", "30")
	if err != nil || !strings.Contains(out, "Enabled → PendingDeletion (dry run: nothing changed)") || !strings.Contains(out, "2 dry run") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	_ = env.Client.List(context.Background(), &list, client.InNamespace(ns))
	for _, c := range list.Items {
		if c.Generation != before[c.Name] || c.Spec.DeletionScheduled || c.Spec.PendingDays != 7 || c.Status.Phase != v1alpha1.PhaseEnabled {
			t.Errorf("%s changed under --dry-run: generation %d→%d, spec %+v, phase %s", c.Name, before[c.Name], c.Generation, c.Spec, c.Status.Phase)
		}
	}
}

// TestMixedPhases runs verbs over a selection whose keys are in different phases: each is
// changed or skipped with the reason.
func TestMixedPhases(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	mix := testenv.Labels(map[string]string{"mix": "yes"})
	create(t, testenv.Key(ns, "enabled", mix), testenv.Key(ns, "pending", mix), testenv.Key(ns, "disabled", mix, func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled = false }),
		testenv.Key(ns, "byok", mix, testenv.External))
	settled(t, ns)
	if out, err := kubectlCmk(t, "-n", ns, "schedule-deletion", "pending", "--wait", "--pending-days", "30"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	pending := &v1alpha1.CustomerMasterKey{}
	_ = env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "pending"}, pending)
	if pending.Spec.PendingDays != 30 || pending.Status.DeletionDate == nil {
		t.Errorf("--pending-days 30 was not applied: %+v", pending.Spec)
	}

	out, err := kubectlCmk(t, "-n", ns, "cancel-deletion", "-l", "mix=yes", "--wait")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		ns + "/pending   PendingDeletion → Disabled",
		ns + "/enabled   SKIPPED (Enabled): not pending deletion",
		ns + "/disabled  SKIPPED (Disabled): not pending deletion",
		ns + "/byok      SKIPPED (PendingImport): not pending deletion",
		"1 changed, 3 skipped",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("cancel-deletion table lacks %q:\n%s", want, out)
		}
	}
	out, err = kubectlCmk(t, "-n", ns, "enable", "-l", "mix=yes", "--wait")
	if err != nil || !strings.Contains(out, "Disabled → Enabled") || !strings.Contains(out, "SKIPPED (Enabled): already enabled") {
		t.Errorf("enable: %v\n%s", err, out)
	}
	out, err = kubectlCmk(t, "-n", ns, "status", "-l", "mix=yes")
	if err != nil || !strings.Contains(out, "WAITING-FOR") || !strings.Contains(out, "DELETES-IN") || !strings.Contains(out, "ROTATION") || !strings.Contains(out, "PendingImport: The key has no key material") {
		t.Errorf("status: %v\n%s", err, out)
	}
}

// TestPartialFailure names a key that does not exist beside one that does, and asks for a
// change the apiserver refuses: the good key changes, the bad rows say why, the exit fails.
func TestPartialFailure(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	create(t, testenv.Key(ns, "real"))
	settled(t, ns)
	out, err := kubectlCmk(t, "-n", ns, "disable", "real", "ghost", "--wait")
	if err == nil || !strings.Contains(err.Error(), "1 of 2 keys failed: "+ns+"/ghost") {
		t.Errorf("want an error naming the failed key, got %v", err)
	}
	if !strings.Contains(out, ns+"/ghost  FAILED: not found") || !strings.Contains(out, ns+"/real   Enabled → Disabled") {
		t.Errorf("table:\n%s", out)
	}
	_, err = kubectlCmk(t, "-n", ns, "schedule-deletion", "real", "--pending-days", "3")
	if err == nil {
		t.Error("pendingDays 3 was accepted")
	}
	out, err = kubectlCmk(t, "-n", ns, "cancel-deletion", "-l", "team=nobody")
	if err != nil || !strings.Contains(out, "No CustomerMasterKeys match -l team=nobody in namespace "+ns) {
		t.Errorf("empty selection: %v\n%s", err, out)
	}
	if _, err := kubectlCmk(t, "-n", ns, "enable"); err == nil || !strings.Contains(err.Error(), "name one or more keys") {
		t.Errorf("no names, no selector: %v", err)
	}
}

// TestImportMaterial brings an External key to Enabled with kubectl cmk import-material; only
// wrapped material reaches the cluster.
func TestImportMaterial(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	create(t, testenv.Key(ns, "own", testenv.External, func(c *v1alpha1.CustomerMasterKey) { c.Spec.Enabled = false }))
	NewWithT(t).Eventually(func() *v1alpha1.ImportParameters {
		c := &v1alpha1.CustomerMasterKey{}
		_ = env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "own"}, c)
		return c.Status.ImportParameters
	}).WithTimeout(30 * time.Second).ShouldNot(BeNil())

	material := bytes.Repeat([]byte{0x5a}, 32)
	file := filepath.Join(t.TempDir(), "material.bin")
	if err := os.WriteFile(file, material, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := kubectlCmk(t, "-n", ns, "import-material", "own", "--material-file", file, "--wait")
	if err != nil || !strings.Contains(out, "PendingImport → Disabled") {
		t.Fatalf("import-material: %v\n%s", err, out)
	}
	s := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "own-key-material"}, s); err != nil {
		t.Fatal(err)
	}
	if len(s.Data[v1alpha1.SecretKeyEncryptedKeyMaterial]) != 256 || bytes.Contains(s.Data[v1alpha1.SecretKeyEncryptedKeyMaterial], material) {
		t.Error("the Secret does not hold RSA-2048-wrapped material")
	}
	if _, err := kubectlCmk(t, "-n", ns, "import-material", "own", "--material-file", file); err == nil ||
		!strings.Contains(err.Error(), "no import parameters published") {
		t.Errorf("import into a key that has material: %v", err)
	}
}

func TestWrapMaterialRefusesExpiredParameters(t *testing.T) {
	t.Parallel()
	c := testenv.Key("ns", "k", testenv.External)
	c.Status.ImportParameters = &v1alpha1.ImportParameters{WrappingAlgorithm: v1alpha1.WrappingAlgorithmRSAESOAEPSHA256,
		ExpiresAt: metav1.NewTime(time.Now().Add(-time.Minute))}
	_, _, err := wrapMaterial(c, "unused")
	if err == nil || !strings.Contains(err.Error(), "import parameters expired") {
		t.Errorf("expired parameters: %v", err)
	}
}

// TestReimportAfterExpiry imports material that expires, lets it expire, and imports the same
// material again with no --expires-at: fresh parameters are published while spec.keyMaterial is
// still set, and the old expiresAt is cleared rather than refused as passed.
func TestReimportAfterExpiry(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	create(t, testenv.Key(ns, "own", testenv.External))
	get := func() *v1alpha1.CustomerMasterKey {
		c := &v1alpha1.CustomerMasterKey{}
		if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "own"}, c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	NewWithT(t).Eventually(func() *v1alpha1.ImportParameters { return get().Status.ImportParameters }).
		WithTimeout(30 * time.Second).ShouldNot(BeNil())
	file := filepath.Join(t.TempDir(), "material.bin")
	if err := os.WriteFile(file, bytes.Repeat([]byte{0x3c}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	expiry := time.Now().Add(4 * time.Second).UTC().Format(time.RFC3339)
	if out, err := kubectlCmk(t, "-n", ns, "import-material", "own", "--material-file", file, "--expires-at", expiry, "--wait"); err != nil {
		t.Fatalf("first import: %v\n%s", err, out)
	}
	// The material expires: the key waits for material again, with parameters to wrap it.
	NewWithT(t).Eventually(func(g Gomega) {
		c := get()
		g.Expect(c.Status.Phase).To(Equal(v1alpha1.PhasePendingImport))
		g.Expect(c.Status.ImportParameters).NotTo(BeNil())
	}).WithTimeout(30 * time.Second).Should(Succeed())

	out, err := kubectlCmk(t, "-n", ns, "import-material", "own", "--material-file", file, "--wait", "--timeout", "30s")
	if err != nil || !strings.Contains(out, "PendingImport → Enabled") {
		t.Fatalf("re-import without --expires-at: %v\n%s\n%+v", err, out, get().Status)
	}
	if c := get(); c.Spec.KeyMaterial.ExpiresAt != nil || c.Status.MaterialExpiresAt != nil {
		t.Errorf("expiry kept after a re-import without --expires-at: spec %v, status %v", c.Spec.KeyMaterial.ExpiresAt, c.Status.MaterialExpiresAt)
	}
}

// TestGuardRailsInTables: the tables show each key's policy; an observed key is skipped by
// every change, and a protected key by schedule-deletion, each saying why.
func TestGuardRailsInTables(t *testing.T) {
	ns := namespace(t)
	rails := testenv.Labels(map[string]string{"rails": "yes"})
	create(t, testenv.Key(ns, "base", rails, func(c *v1alpha1.CustomerMasterKey) { c.Spec.DeletionProtection = true }))
	settled(t, ns)
	base := &v1alpha1.CustomerMasterKey{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "base"}, base); err != nil {
		t.Fatal(err)
	}
	create(t, testenv.Key(ns, "watched", rails, func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.ManagementPolicy, c.Spec.KeyID = v1alpha1.ManagementPolicyObserve, base.Status.KeyID
	}))
	settled(t, ns)

	out, err := kubectlCmk(t, "-n", ns, "schedule-deletion", "-l", "rails=yes")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		ns + "/base     SKIPPED (Enabled): deletionProtection: clear spec.deletionProtection first",
		ns + "/watched  SKIPPED (Enabled): managementPolicy Observe: the operator changes nothing",
		"2 skipped",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("schedule-deletion table lacks %q:\n%s", want, out)
		}
	}
	out, err = kubectlCmk(t, "-n", ns, "status", "-l", "rails=yes")
	if err != nil || !strings.Contains(out, "POLICY") || !strings.Contains(out, "Manage,protected") || !strings.Contains(out, "Observe") {
		t.Errorf("status: %v\n%s", err, out)
	}
}

// TestKeysInUse: a bulk disable skips the keys in use, naming their consumers; asked
// --allow-while-in-use, it goes ahead with the override annotation set; usage lists the
// consumers.
func TestKeysInUse(t *testing.T) {
	ns := namespace(t)
	team := testenv.Labels(map[string]string{"team": "db"})
	create(t, testenv.Key(ns, "used", team), testenv.Key(ns, "idle", team))
	settled(t, ns)
	used := &v1alpha1.CustomerMasterKey{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "used"}, used); err != nil {
		t.Fatal(err)
	}
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "evs-" + ns}, Provisioner: "everest-csi-provisioner",
		Parameters: map[string]string{"everest.io/crypt-key-id": used.Status.KeyID}}
	if err := env.Client.Create(context.Background(), sc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), sc) })
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(used), used)).To(Succeed())
		g.Expect(used.Status.Usage).NotTo(BeNil())
		g.Expect(used.Status.Usage.Consumers).To(BeEquivalentTo(1))
	}).WithTimeout(30 * time.Second).Should(Succeed())

	out, err := kubectlCmk(t, "-n", ns, "usage", "used")
	if err != nil || !strings.Contains(out, "is in use by 1 consumer(s)") || !strings.Contains(out, "StorageClass/-/evs-"+ns) {
		t.Errorf("usage: %v\n%s", err, out)
	}
	out, err = kubectlCmk(t, "-n", ns, "disable", "-l", "team=db")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{ns + "/used  SKIPPED (Enabled): in use by StorageClass/-/evs-" + ns + ": remove them first, or --allow-while-in-use", "1 skipped"} {
		if !strings.Contains(out, want) {
			t.Errorf("disable table lacks %q:\n%s", want, out)
		}
	}
	out, err = kubectlCmk(t, "-n", ns, "disable", "used", "--allow-while-in-use", "--wait")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(used), used); err != nil {
		t.Fatal(err)
	}
	if used.Annotations[v1alpha1.AllowWhileInUseAnnotation] != "true" || used.Status.Phase != v1alpha1.PhaseDisabled {
		t.Errorf("disable --allow-while-in-use: annotations %v, phase %s\n%s", used.Annotations, used.Status.Phase, out)
	}
}
