package gitops

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKubectlWaitForReady: `kubectl wait --for=condition=Ready` returns for keys the KMS holds
// as their spec asks, disabled and scheduled ones included, and times out for a stalled one.
func TestKubectlWaitForReady(t *testing.T) {
	t.Parallel()
	ns := withOperator(t, "kubectl")
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.KubeConfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	kubectl := filepath.Join(env.Assets, "kubectl")
	wait := func(name, timeout string) (string, time.Duration, error) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		start := time.Now()
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", kubeconfig, "-n", ns,
			"wait", "--for=condition=Ready", "cmk/"+name, "--timeout="+timeout).CombinedOutput()
		return strings.TrimSpace(string(out)), time.Since(start), err
	}

	create(t,
		cmk(ns, "enabled", specEnabled),
		cmk(ns, "disabled", specDisabled),
		cmk(ns, "scheduled", specEnabled),
		cmk(ns, "not-created", specScheduled),
		cmk(ns, "missing", specMissing),
	)
	if out, _, err := wait("scheduled", "30s"); err != nil {
		t.Fatalf("kubectl wait for the key to schedule: %v: %s", err, out)
	}
	setSpec(t, ns, "scheduled", specScheduled)
	for _, name := range []string{"enabled", "disabled", "scheduled", "not-created"} {
		out, took, err := wait(name, "30s")
		if err != nil {
			t.Errorf("kubectl wait for %s: %v: %s; %s", name, err, out, describe(get(t, ns, name)))
			continue
		}
		if want := "customermasterkey.kms.cmk.io/" + name + " condition met"; out != want {
			t.Errorf("kubectl wait for %s: %q, want %q", name, out, want)
		}
		t.Logf("%s: condition met after %s", name, took.Round(time.Millisecond))
	}
	if phase := get(t, ns, "scheduled").Object["status"].(map[string]any)["phase"]; phase != "PendingDeletion" {
		t.Errorf("scheduled: Ready in phase %v, want PendingDeletion", phase)
	}

	out, took, err := wait("missing", "5s")
	if err == nil {
		t.Fatalf("kubectl wait for the key whose keyID names no key succeeded: %s; %s", out, describe(get(t, ns, "missing")))
	}
	if !strings.Contains(out, "timed out waiting for the condition") || took < 5*time.Second {
		t.Errorf("kubectl wait for the missing key: %v after %s: %s, want a timeout after 5s", err, took, out)
	}
}
