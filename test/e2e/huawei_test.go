//go:build e2e

package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms/huaweicloud/standin"
)

// TestHuaweiOverlay deploys config/huaweicloud as docs/huaweicloud.md tells users (the
// credentials Secret made, the project set in the overlay, here also the endpoint: the Huawei
// stand-in, served on this node's address), replacing the embedded KMS's operator, and runs the
// seed's flow against it: the credentials are read from the mounted Secret by a pod running as
// 65532, and every request arrives signed. It runs last (files run in name order): it takes
// the cluster over.
func TestHuaweiOverlay(t *testing.T) {
	// The other tests' keys go first, while the embedded KMS's operator still runs.
	var namespaces corev1.NamespaceList
	if err := c.List(t.Context(), &namespaces); err != nil {
		t.Fatal(err)
	}
	for i := range namespaces.Items {
		if strings.HasPrefix(namespaces.Items[i].Name, "e2e-") {
			if err := c.Delete(t.Context(), &namespaces.Items[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	for deadline := time.Now().Add(wait); ; time.Sleep(time.Second) {
		var keys v1alpha1.CustomerMasterKeyList
		if err := c.List(t.Context(), &keys); err != nil {
			t.Fatal(err)
		}
		if len(keys.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d CustomerMasterKeys of the other tests are still there", len(keys.Items))
		}
	}

	var nodes corev1.NodeList
	if err := c.List(t.Context(), &nodes); err != nil || len(nodes.Items) != 1 {
		t.Fatalf("nodes: %v", err)
	}
	var nodeIP string
	for _, a := range nodes.Items[0].Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			nodeIP = a.Address
		}
	}
	l, err := net.Listen("tcp", net.JoinHostPort(nodeIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	s := standin.StartOn(time.Now().UTC().Truncate(time.Second), l)
	t.Cleanup(s.Close)

	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: "huaweicloud-credentials"},
		StringData: map[string]string{"access-key": s.AK, "secret-key": s.SK}}
	if err := c.Create(t.Context(), secret); err != nil {
		t.Fatal(err)
	}
	// A copy of config, edited as a user edits the overlay.
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-r", filepath.Join("..", "..", "config"), dir).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	manifest := filepath.Join(dir, "config", "huaweicloud", "manager_huaweicloud.yaml")
	raw, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(raw), "REPLACE_WITH_PROJECT_ID", s.ProjectID, 1)
	edited = strings.Replace(edited, "  - --huaweicloud-credentials-dir=", "  - --huaweicloud-endpoint="+s.URL+"\n  - --huaweicloud-credentials-dir=", 1)
	if edited == string(raw) || !strings.Contains(edited, s.URL) {
		t.Fatal("config/huaweicloud/manager_huaweicloud.yaml no longer has the lines docs/huaweicloud.md tells users to edit")
	}
	if err := os.WriteFile(manifest, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl := filepath.Join("..", "..", "bin", "k8s", "kubectl")
	for _, args := range [][]string{{"apply", "-k", filepath.Join(dir, "config", "huaweicloud")},
		{"-n", operatorNamespace, "rollout", "status", "deployment/cmk-operator", "--timeout=2m"}} {
		if out, err := exec.Command(kubectl, args...).CombinedOutput(); err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
	}

	ns := namespace(t, "e2e-huawei")
	if err := c.Create(t.Context(), key(ns, "app")); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "app", v1alpha1.PhaseEnabled)
	patchSpec(t, ns, "app", `{"enabled":false,"deletionScheduled":true,"pendingDays":7}`)
	waitPhase(t, ns, "app", v1alpha1.PhasePendingDeletion)
	patchSpec(t, ns, "app", `{"deletionScheduled":false}`)
	k := waitPhase(t, ns, "app", v1alpha1.PhaseDisabled)
	if calls := s.Calls(); calls["create-key"] == 0 || calls["cancel-key-deletion"] == 0 {
		t.Errorf("the stand-in saw %v: the key %s was not made and canceled there", calls, k.Status.KeyID)
	}
	if n := s.Unsigned(); n != 0 {
		t.Errorf("%d requests reached the stand-in unsigned or badly signed: the credentials were not read", n)
	}
	proc := managerProcess(t, "--kms-provider=huaweicloud")
	status, _ := os.ReadFile(filepath.Join(proc, "status"))
	if !strings.Contains(string(status), "Gid:\t65532\t65532\t65532\t65532") {
		t.Errorf("the Huawei manager's groups: %s", status)
	}
}
