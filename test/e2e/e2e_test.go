//go:build e2e

// Package e2e tests the operator the way users run it: deployed with kubectl apply -k
// config/default into a real cluster, as a pod. `make e2e` (hack/e2e/run.sh) brings the cluster
// up, deploys, runs these tests with KUBECONFIG pointing at it, and tears it down; they are
// built only with the e2e tag, so `go test ./...` leaves them out.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/scheme"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

const (
	operatorNamespace = "cmk-system"
	wait              = 2 * time.Minute
)

var c client.Client

func TestMain(m *testing.M) {
	if os.Getenv("KUBECONFIG") == "" {
		fmt.Fprintln(os.Stderr, "KUBECONFIG names no cluster: run the e2e suite with make e2e")
		os.Exit(1)
	}
	var err error
	if c, err = client.New(ctrl.GetConfigOrDie(), client.Options{Scheme: scheme.Scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// A manager that never leads (a Lease it may not take) would fail every test by a timeout:
	// it is said at once instead, with what the apiserver refused it.
	if !leading() {
		fmt.Fprintln(os.Stderr, "e2e: no manager took the leader-election Lease within a minute")
		explainFailure()
		os.Exit(1)
	}
	code := m.Run()
	if code != 0 {
		explainFailure()
	}
	os.Exit(code)
}

// leading waits up to a minute for a manager to hold the leader-election Lease.
func leading() bool {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		lease := &coordinationv1.Lease{}
		err := c.Get(context.Background(), client.ObjectKey{Namespace: operatorNamespace, Name: "cmk-operator.kms.cmk.io"}, lease)
		if err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
			return true
		}
	}
	return false
}

// explainFailure points at what the manager was refused, when it was: a Deployment whose RBAC
// lacks a rule fails the tests by keys that never settle, and its logs say which rule.
func explainFailure() {
	out, _ := exec.Command(filepath.Join("..", "..", "bin", "k8s", "kubectl"), "logs", "-n", operatorNamespace,
		"-l", "app.kubernetes.io/name=cmk-operator", "--tail=-1", "--prefix").CombinedOutput()
	seen := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		i := strings.Index(line, "is forbidden: ")
		if i < 0 {
			continue
		}
		// The manager logs JSON: the refusal is a string field, its quotes escaped.
		refusal := strings.ReplaceAll(line[i:], `\"`, `"`)
		for _, end := range []string{`","`, `"}`} {
			if j := strings.Index(refusal, end); j > 0 {
				refusal = refusal[:j]
			}
		}
		if !seen[refusal] {
			seen[refusal] = true
			fmt.Fprintf(os.Stderr, "e2e: the manager was refused by the apiserver (check config/rbac): %s\n", refusal)
		}
	}
}

func namespace(t *testing.T, name string) string {
	t.Helper()
	if err := c.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

// key is a test key (testenv.Key) with an alias of its namespace and name.
func key(ns, name string, mutate ...func(*v1alpha1.CustomerMasterKey)) *v1alpha1.CustomerMasterKey {
	aliased := func(k *v1alpha1.CustomerMasterKey) { k.Spec.Alias = ns + "/" + name }
	return testenv.Key(ns, name, append([]func(*v1alpha1.CustomerMasterKey){aliased}, mutate...)...)
}

// waitPhase waits until the key reports phase for its current spec.
func waitPhase(t *testing.T, ns, name string, phase v1alpha1.Phase) *v1alpha1.CustomerMasterKey {
	t.Helper()
	k := &v1alpha1.CustomerMasterKey{}
	deadline := time.Now().Add(wait)
	for {
		err := c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, k)
		if err == nil && k.Status.Phase == phase && k.Status.ObservedGeneration == k.Generation {
			return k
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s: phase %q (%v), want %s", ns, name, k.Status.Phase, err, phase)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func objectMeta(ns, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name}
}

func patchSpec(t *testing.T, ns, name, spec string) {
	t.Helper()
	k := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Patch(t.Context(), k, client.RawPatch("application/merge-patch+json", []byte(`{"spec":`+spec+`}`))); err != nil {
		t.Fatal(err)
	}
}

// TestSeedOneKey is the seed's flow for a key the KMS made: scheduled for deletion, the
// deletion canceled, the key comes back Disabled, and is enabled as a separate step.
func TestSeedOneKey(t *testing.T) {
	ns := namespace(t, "e2e-one")
	if err := c.Create(t.Context(), key(ns, "app")); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "app", v1alpha1.PhaseEnabled)
	patchSpec(t, ns, "app", `{"enabled":false,"deletionScheduled":true,"pendingDays":7}`)
	if k := waitPhase(t, ns, "app", v1alpha1.PhasePendingDeletion); k.Status.DeletionDate == nil {
		t.Error("pending deletion without a deletion date")
	}
	patchSpec(t, ns, "app", `{"deletionScheduled":false}`)
	waitPhase(t, ns, "app", v1alpha1.PhaseDisabled)
	patchSpec(t, ns, "app", `{"enabled":true}`)
	waitPhase(t, ns, "app", v1alpha1.PhaseEnabled)
}

// TestSeedExternalKey is the seed's flow for a key made for imported material that never
// received it: canceled, it is PendingImport again.
func TestSeedExternalKey(t *testing.T) {
	ns := namespace(t, "e2e-byok")
	if err := c.Create(t.Context(), key(ns, "byok", testenv.External)); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "byok", v1alpha1.PhasePendingImport)
	patchSpec(t, ns, "byok", `{"enabled":false,"deletionScheduled":true,"pendingDays":7}`)
	waitPhase(t, ns, "byok", v1alpha1.PhasePendingDeletion)
	patchSpec(t, ns, "byok", `{"deletionScheduled":false}`)
	waitPhase(t, ns, "byok", v1alpha1.PhasePendingImport)
}

// TestSeedManyByLabel schedules and cancels the deletion of keys selected by label with
// kubectl cmk, against the operator in the cluster.
func TestSeedManyByLabel(t *testing.T) {
	ns := namespace(t, "e2e-many")
	const n = 20
	for i := range n {
		k := key(ns, fmt.Sprintf("k%02d", i), testenv.Labels(map[string]string{"team": "payments"}))
		if err := c.Create(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		waitPhase(t, ns, fmt.Sprintf("k%02d", i), v1alpha1.PhaseEnabled)
	}
	for _, step := range []struct {
		verb string
		to   v1alpha1.Phase
	}{{"schedule-deletion", v1alpha1.PhasePendingDeletion}, {"cancel-deletion", v1alpha1.PhaseDisabled}} {
		out := kubectlCmk(t, "-n", ns, step.verb, "-l", "team=payments", "--wait", "--timeout", "2m")
		if !strings.Contains(out, fmt.Sprintf("%d changed", n)) {
			t.Fatalf("kubectl cmk %s: %s", step.verb, out)
		}
		for i := range n {
			waitPhase(t, ns, fmt.Sprintf("k%02d", i), step.to)
		}
	}
}

func kubectlCmk(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join("..", "..", "bin", "kubectl-cmk"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl cmk %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// managerProcess finds the manager's process on this machine, the cluster's only node, whose
// arguments include arg.
func managerProcess(t *testing.T, arg string) string {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmd, err := os.ReadFile(p)
		if err == nil && bytes.HasPrefix(cmd, []byte("/manager\x00")) && bytes.Contains(cmd, []byte("\x00"+arg+"\x00")) {
			return filepath.Dir(p)
		}
	}
	t.Fatal("no manager process on the node")
	return ""
}

// TestManagerPodSecurity checks the pod as it runs: admitted under the restricted Pod Security
// Standard, as user and group 65532 (not group 0), on a read-only root filesystem.
func TestManagerPodSecurity(t *testing.T) {
	ns := &corev1.Namespace{}
	if err := c.Get(t.Context(), client.ObjectKey{Name: operatorNamespace}, ns); err != nil {
		t.Fatal(err)
	}
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace %s enforces %q, want restricted", operatorNamespace, ns.Labels["pod-security.kubernetes.io/enforce"])
	}
	// The group is the Deployment's to set, not the image's: with an image whose /etc/passwd
	// lacks the user, a runtime gives the process group 0 unless runAsGroup says otherwise.
	d := &appsv1.Deployment{}
	if err := c.Get(t.Context(), client.ObjectKey{Namespace: operatorNamespace, Name: "cmk-operator"}, d); err != nil {
		t.Fatal(err)
	}
	if sc := d.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 65532 ||
		sc.RunAsGroup == nil || *sc.RunAsGroup != 65532 {
		t.Errorf("the deployed pod's securityContext %+v does not set runAsUser and runAsGroup 65532", sc)
	}
	proc := managerProcess(t, "--kms-provider=embedded")
	status, err := os.ReadFile(filepath.Join(proc, "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) == 5 && (f[0] == "Uid:" || f[0] == "Gid:") {
			for _, id := range f[1:] {
				if id != "65532" {
					t.Errorf("the manager runs with %s, want 65532 throughout", line)
					break
				}
			}
		}
	}
	mounts, err := os.ReadFile(filepath.Join(proc, "mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[4] == "/" && !strings.Contains(","+f[5]+",", ",ro,") {
			t.Errorf("the manager's root filesystem is mounted %s, want read-only", f[5])
		}
	}
}

// TestServiceAccountRights asks the apiserver what the operator's ServiceAccount may do: what
// it needs, and nothing of a list of things it must not.
func TestServiceAccountRights(t *testing.T) {
	sa := "system:serviceaccount:cmk-system:cmk-operator"
	for _, r := range []struct {
		args []string
		want string
	}{
		{[]string{"patch", "customermasterkeys.kms.cmk.io", "-A"}, "yes"},
		{[]string{"patch", "customermasterkeys.kms.cmk.io", "--subresource=status", "-A"}, "yes"},
		{[]string{"create", "events", "-n", "default"}, "yes"},
		{[]string{"get", "secrets", "-n", "default"}, "yes"}, // a key's keyMaterial Secret, by name
		{[]string{"list", "secrets", "-n", "cmk-system"}, "yes"},
		{[]string{"create", "tokenreviews.authentication.k8s.io"}, "yes"},
		{[]string{"list", "secrets", "-n", "default"}, "no"},
		{[]string{"watch", "secrets", "-A"}, "no"},
		{[]string{"create", "secrets", "-n", "default"}, "no"},
		{[]string{"delete", "secrets", "-n", "cmk-system"}, "no"},
		{[]string{"create", "customermasterkeys.kms.cmk.io", "-n", "default"}, "no"},
		{[]string{"delete", "customermasterkeys.kms.cmk.io", "-A"}, "no"},
		{[]string{"create", "pods", "-n", "cmk-system"}, "no"},
		{[]string{"delete", "namespaces"}, "no"},
		{[]string{"update", "clusterroles"}, "no"},
		{[]string{"impersonate", "users"}, "no"},
		{[]string{"create", "serviceaccounts", "--subresource=token", "-n", "cmk-system"}, "no"},
		{[]string{"create", "pods", "--subresource=exec", "-n", "cmk-system"}, "no"},
		{[]string{"create", "rolebindings.rbac.authorization.k8s.io", "-n", "cmk-system"}, "no"},
		{[]string{"patch", "deployments.apps", "-n", "cmk-system"}, "no"},
	} {
		// The answer is on stdout (can-i exits 1 for "no"); warnings go to stderr.
		out, _ := exec.Command(filepath.Join("..", "..", "bin", "k8s", "kubectl"),
			append([]string{"auth", "can-i", "--as", sa}, r.args...)...).Output()
		if got := strings.TrimSpace(string(out)); got != r.want {
			t.Errorf("can the operator %s? %s, want %s", strings.Join(r.args, " "), got, r.want)
		}
	}
}

// TestMetricsThroughTheService scrapes the manager's metrics through its Service, as
// Prometheus would, with a ServiceAccount bound to the metrics reader role.
func TestMetricsThroughTheService(t *testing.T) {
	ns := namespace(t, "e2e-metrics")
	if err := c.Create(t.Context(), key(ns, "watched")); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "watched", v1alpha1.PhaseEnabled)
	kubectl := filepath.Join("..", "..", "bin", "k8s", "kubectl")
	for _, args := range [][]string{{"-n", ns, "create", "serviceaccount", "prometheus"},
		{"create", "clusterrolebinding", "e2e-metrics-reader", "--clusterrole=cmk-operator-metrics-reader", "--serviceaccount=" + ns + ":prometheus"}} {
		if out, err := exec.Command(kubectl, args...).CombinedOutput(); err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
	}
	token, err := exec.Command(kubectl, "-n", ns, "create", "token", "prometheus").Output()
	if err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{}
	if err := c.Get(t.Context(), client.ObjectKey{Namespace: operatorNamespace, Name: "cmk-operator-metrics"}, svc); err != nil {
		t.Fatal(err)
	}
	url := "https://" + svc.Spec.ClusterIP + ":" + strconv.Itoa(int(svc.Spec.Ports[0].Port)) + "/metrics"
	// Self-signed: what is checked here is the path through the Service and who may scrape.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	want := `cmk_keys{namespace="` + ns + `",phase="Enabled"} 1`
	var body []byte
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(time.Second) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		resp, err := hc.Do(req)
		if err != nil {
			continue
		}
		body, _ = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(want)) && bytes.Contains(body, []byte("cmk_key_metrics_up 1")) {
			return
		}
	}
	t.Fatalf("scraping %s never showed %s:\n%.2000s", url, want, body)
}
