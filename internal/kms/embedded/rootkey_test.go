package embedded

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
)

var otherRoot = bytes.Repeat([]byte{9}, rootKeySize)

func (f *fixture) restart(opts Options) (*Provider, error) {
	return New(f.ctx, kms.Env{Client: env.Client, Namespace: f.ns, Clock: f.clock, Log: logr.Discard()}, opts)
}

func writeRootKeyFile(t *testing.T, root []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "root-key")
	if err := os.WriteFile(path, root, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRootKeyLostIsRefused deletes the root key Secret while keys sealed under it exist: the
// next start refuses, says how to restore it, and makes no new root key; restoring the Secret
// brings the keys back whole.
func TestRootKeyLostIsRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.create(t, "AES_256", kms.OriginKMS)
	ctx := context.Background()
	root := &corev1.Secret{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: f.ns, Name: RootKeySecret}, root); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, root); err != nil {
		t.Fatal(err)
	}

	_, err := f.restart(Options{})
	if err == nil || !strings.Contains(err.Error(), "restore it from your backup") || !strings.Contains(err.Error(), f.p.sealer.check()) {
		t.Fatalf("start without the root key: %v", err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(root), &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("a new root key was made while keys sealed under the old one exist: %v", err)
	}

	root.ResourceVersion, root.UID = "", ""
	if err := env.Client.Create(ctx, root); err != nil {
		t.Fatal(err)
	}
	again, err := f.restart(Options{})
	if err != nil {
		t.Fatalf("start with the restored root key: %v", err)
	}
	if _, err := again.sealer.open(k.ID, f.secret(t, k.ID).Data[materialField]); err != nil {
		t.Errorf("restored root key does not open the key: %v", err)
	}
}

// TestOtherRootKeyIsRefused starts with a root key other than the one the keys are sealed
// under: refused, with both check values named, from a file or from the Secret.
func TestOtherRootKeyIsRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.create(t, "AES_256", kms.OriginKMS)
	_, err := f.restart(Options{RootKeyFile: writeRootKeyFile(t, otherRoot)})
	if err == nil || !strings.Contains(err.Error(), "is not the one key Secret") || !strings.Contains(err.Error(), f.p.sealer.check()) {
		t.Errorf("start with another root key: %v", err)
	}
}

// TestRootKeyCheckRecordedForOlderKeys takes the check value off a key, as keys made before
// check values were recorded lack it: a start with the right root key opens the key and
// records the value; a start with another root key is refused.
func TestRootKeyCheckRecordedForOlderKeys(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	external := f.create(t, "AES_256", kms.OriginExternal)
	if _, err := f.p.ImportParameters(context.Background(), external.ID); err != nil { // a sealed wrapping key
		t.Fatal(err)
	}
	k := f.create(t, "AES_256", kms.OriginKMS)
	ctx := context.Background()
	for _, id := range []string{k.ID, external.ID} {
		s := f.secret(t, id)
		delete(s.Labels, labelRootKeyCheck)
		if err := env.Client.Update(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.restart(Options{RootKeyFile: writeRootKeyFile(t, otherRoot)}); err == nil {
		t.Error("another root key was accepted for keys without a check value")
	}
	if _, err := f.restart(Options{}); err != nil {
		t.Fatalf("the right root key: %v", err)
	}
	for _, id := range []string{k.ID, external.ID} {
		if got := f.secret(t, id).Labels[labelRootKeyCheck]; got != f.p.sealer.check() {
			t.Errorf("key %s: check value %q after a start, want %q", id, got, f.p.sealer.check())
		}
	}
}

// TestNewRootKeyWhenOnlyDeletedKeys makes a new root key when the only keys left are
// deleted ones: nothing sealed remains to lose.
func TestNewRootKeyWhenOnlyDeletedKeys(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.create(t, "AES_256", kms.OriginKMS)
	if err := f.do(k.ID, kmstest.Schedule); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(8 * 24 * time.Hour)
	if _, err := f.p.ReapDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.state(t, k.ID); got != kms.StateDeleted {
		t.Fatalf("key is %s", got)
	}
	root := &corev1.Secret{}
	root.Name, root.Namespace = RootKeySecret, f.ns
	if err := env.Client.Delete(context.Background(), root); err != nil {
		t.Fatal(err)
	}
	if _, err := f.restart(Options{}); err != nil {
		t.Errorf("start with only deleted keys left: %v", err)
	}
}
