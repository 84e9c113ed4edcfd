package embedded

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/uuid"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// writeCounter counts the writes a provider makes to the apiserver.
type writeCounter struct{ n atomic.Int64 }

func (w *writeCounter) client() client.Client {
	count := func() { w.n.Add(1) }
	return interceptor.NewClient(env.Client, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
			count()
			return c.Create(ctx, o, opts...)
		},
		Update: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.UpdateOption) error {
			count()
			return c.Update(ctx, o, opts...)
		},
		Patch: func(ctx context.Context, c client.WithWatch, o client.Object, p client.Patch, opts ...client.PatchOption) error {
			count()
			return c.Patch(ctx, o, p, opts...)
		},
		Delete: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.DeleteOption) error {
			count()
			return c.Delete(ctx, o, opts...)
		},
	})
}

type fixture struct {
	p      *Provider
	clock  *clocktesting.FakeClock
	writes *writeCounter
	ns     string
	// ctx is the test's: the providers' views of the key Secrets stop with it.
	ctx context.Context
}

// newFixture gives each test its own KMS namespace, so tests never see each other's keys.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	ns := "kms-" + string(uuid.NewUUID())[:8]
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	f := &fixture{clock: clocktesting.NewFakeClock(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)), writes: &writeCounter{}, ns: ns, ctx: t.Context()}
	p, err := New(f.ctx, kms.Env{Client: f.writes.client(), Namespace: ns, Clock: f.clock, Log: logr.Discard()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.p = p
	f.writes.n.Store(0)
	return f
}

func (f *fixture) create(t *testing.T, spec, origin string) kms.Key {
	t.Helper()
	k, err := f.p.Create(context.Background(), kms.CreateRequest{
		Alias: "test/" + string(uuid.NewUUID()), KeySpec: spec, KeyUsage: "ENCRYPT_DECRYPT", Origin: origin, Token: string(uuid.NewUUID()),
	})
	if err != nil {
		t.Fatalf("Create(%s, %s): %v", spec, origin, err)
	}
	return k
}

func (f *fixture) state(t *testing.T, id string) kms.State {
	t.Helper()
	return stateIn(t, f.p, id)
}

// stateIn is the key's state as p sees it: another provider's view has a write of p's only
// once its watch delivers it.
func stateIn(t *testing.T, p *Provider, id string) kms.State {
	t.Helper()
	k, err := p.Observe(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return k.State
}

func (f *fixture) secret(t *testing.T, id string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: secretName(id)}, s); err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fixture) do(id string, c kmstest.Call) error { return kmstest.Do(f.p, id, c) }

// TestOneWritePerStateChange checks the embedded KMS's write budget, on top of the lifecycle
// the conformance suite checks: a call that changes a key's state writes its Secret once, a
// call with nothing to do writes nothing.
func TestOneWritePerStateChange(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	generated := f.create(t, "AES_256", kms.OriginKMS)
	external := f.create(t, "AES_256", kms.OriginExternal)
	for _, step := range []struct {
		key    string
		call   kmstest.Call
		writes int64
	}{
		{generated.ID, kmstest.Disable, 1}, {generated.ID, kmstest.Disable, 0},
		{generated.ID, kmstest.Enable, 1}, {generated.ID, kmstest.Enable, 0},
		{generated.ID, kmstest.Cancel, 0},
		{generated.ID, kmstest.Schedule, 1}, {generated.ID, kmstest.Schedule, 0},
		{generated.ID, kmstest.Cancel, 1}, {generated.ID, kmstest.Cancel, 0},
		{external.ID, kmstest.Schedule, 1}, {external.ID, kmstest.Cancel, 1},
	} {
		f.writes.n.Store(0)
		if err := f.do(step.key, step.call); err != nil {
			t.Fatalf("%s: %v", step.call, err)
		}
		if got := f.writes.n.Load(); got != step.writes {
			t.Errorf("%s of key %s: %d Secret writes, want %d", step.call, step.key, got, step.writes)
		}
	}
	if got := f.state(t, external.ID); got != kms.StatePendingImport {
		t.Errorf("external key after cancel: %s", got)
	}
}

func TestDeletedRefusesEverything(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.create(t, "AES_256", kms.OriginKMS)
	if err := f.do(k.ID, kmstest.Schedule); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(7*24*time.Hour + time.Second)
	if _, err := f.p.ReapDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []kmstest.Call{kmstest.Enable, kmstest.Disable, kmstest.Schedule, kmstest.Cancel} {
		var se *kms.StateError
		if err := f.do(k.ID, c); !errors.As(err, &se) {
			t.Errorf("%s on a deleted key: got %v, want a StateError", c, err)
		}
	}
	if err := f.p.SetDescription(context.Background(), k.ID, "x"); err == nil {
		t.Error("SetDescription on a deleted key succeeded")
	}
}

func TestCreateIsIdempotentOnToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	req := kms.CreateRequest{Alias: "app/one", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "uid-1"}
	var wg sync.WaitGroup
	ids := make([]string, 5)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := f.p.Create(context.Background(), req)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = k.ID
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("Create with one token gave keys %v", ids)
		}
	}
	var list corev1.SecretList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(f.ns), client.MatchingLabels{labelKey: "true"}); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 {
		t.Errorf("%d key Secrets after five Creates with one token, want 1", len(list.Items))
	}
	f.writes.n.Store(0)
	if _, err := f.p.Create(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if n := f.writes.n.Load(); n != 0 {
		t.Errorf("repeated Create wrote %d times, want 0", n)
	}
}

func TestAliasInUse(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	req := kms.CreateRequest{Alias: "shared/alias", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "a"}
	first, err := f.p.Create(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	req.Token = "b"
	_, err = f.p.Create(context.Background(), req)
	inUse := kms.AsAliasInUse(err)
	if inUse == nil || inUse.KeyID != first.ID || !kms.IsTerminal(err) {
		t.Fatalf("second key with alias shared/alias: got %v, want an AliasInUseError naming %s", err, first.ID)
	}
	// The holder is for the caller to judge; the message may reach someone who must not learn it.
	if strings.Contains(err.Error(), first.ID) {
		t.Errorf("the refusal names the key that holds the alias: %q", err)
	}
}

// TestMaterial checks that every supported spec gets real material of the right kind, that it
// is stored only sealed, and that SM2 is refused with a clear reason.
func TestMaterial(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cases := map[string]func(t *testing.T, m []byte){
		"AES_256":  func(t *testing.T, m []byte) { wantLen(t, m, 32) },
		"SM4":      func(t *testing.T, m []byte) { wantLen(t, m, 16) },
		"RSA_2048": func(t *testing.T, m []byte) { wantRSA(t, m, 2048) },
		"RSA_3072": func(t *testing.T, m []byte) { wantRSA(t, m, 3072) },
		"EC_P256":  func(t *testing.T, m []byte) { wantEC(t, m, "P-256") },
		"EC_P384":  func(t *testing.T, m []byte) { wantEC(t, m, "P-384") },
	}
	for spec, check := range cases {
		t.Run(spec, func(t *testing.T) {
			k := f.create(t, spec, kms.OriginKMS)
			s := f.secret(t, k.ID)
			sealed := s.Data[materialField]
			material, err := f.p.sealer.open(k.ID, sealed)
			if err != nil {
				t.Fatal(err)
			}
			check(t, material)
			for field, v := range s.Data {
				if bytes.Contains(v, material) || bytes.Contains(v, []byte(base64.StdEncoding.EncodeToString(material))) {
					t.Errorf("field %s of the key's Secret holds the material in plaintext", field)
				}
			}
			if _, err := f.p.sealer.open("another-key", sealed); err == nil {
				t.Error("sealed material opened under another key's ID")
			}
		})
	}
	t.Run("SM2", func(t *testing.T) {
		_, err := f.p.Create(context.Background(), kms.CreateRequest{Alias: "sm2", KeySpec: "SM2", KeyUsage: "SIGN_VERIFY", Origin: kms.OriginKMS, Token: "sm2"})
		if !kms.IsUnsupported(err) || !bytes.Contains([]byte(err.Error()), []byte("not supported by the embedded provider")) {
			t.Fatalf("SM2: got %v, want an UnsupportedError saying so", err)
		}
	})
	t.Run("ExternalHasNoMaterial", func(t *testing.T) {
		k := f.create(t, "AES_256", kms.OriginExternal)
		if _, ok := f.secret(t, k.ID).Data[materialField]; ok || k.HasMaterial || k.State != kms.StatePendingImport {
			t.Errorf("External key: %+v, material stored %v; want PendingImport with none", k, ok)
		}
	})
}

func wantLen(t *testing.T, m []byte, n int) {
	t.Helper()
	if len(m) != n || bytes.Equal(m, make([]byte, n)) {
		t.Errorf("material is %d bytes (all zero: %v), want %d random bytes", len(m), bytes.Equal(m, make([]byte, len(m))), n)
	}
}

func wantRSA(t *testing.T, m []byte, bits int) {
	t.Helper()
	k, err := x509.ParsePKCS8PrivateKey(m)
	if err != nil {
		t.Fatal(err)
	}
	if rk, ok := k.(*rsa.PrivateKey); !ok || rk.N.BitLen() != bits {
		t.Errorf("material is %T, want a %d-bit RSA key", k, bits)
	}
}

func wantEC(t *testing.T, m []byte, curve string) {
	t.Helper()
	k, err := x509.ParsePKCS8PrivateKey(m)
	if err != nil {
		t.Fatal(err)
	}
	if ek, ok := k.(*ecdsa.PrivateKey); !ok || ek.Curve.Params().Name != curve {
		t.Errorf("material is %T, want an ECDSA %s key", k, curve)
	}
}

// TestDeletionAtDate checks that the reaper, on the provider's own clock, deletes a key at its
// deletion date and not before, destroys its material in one write, and says so.
func TestDeletionAtDate(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.create(t, "AES_256", kms.OriginKMS)
	unreferenced := f.create(t, "RSA_2048", kms.OriginKMS)
	for _, id := range []string{k.ID, unreferenced.ID} {
		if err := f.do(id, kmstest.Schedule); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancelReaper := context.WithCancel(context.Background())
	defer cancelReaper()
	done := make(chan struct{})
	go func() { _ = f.p.Start(ctx); close(done) }()

	waitForWaiters(t, f.clock)
	f.clock.Step(7*24*time.Hour - time.Minute)
	waitForWaiters(t, f.clock)
	if got := f.state(t, k.ID); got != kms.StatePendingDeletion {
		t.Fatalf("a minute before the date: %s, want PendingDeletion", got)
	}

	f.writes.n.Store(0)
	f.clock.Step(2 * time.Minute)
	seen := map[string]bool{}
	for len(seen) < 2 {
		select {
		case id := <-f.p.Changes():
			seen[id] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("reaper reported %v, want both keys deleted", seen)
		}
	}
	for _, id := range []string{k.ID, unreferenced.ID} {
		// The reaper tells of a key once its write is in the view, and the view tells of no
		// write of this process's own (not the creates above either: see view.passed), so
		// the state is Deleted at once.
		if got := f.state(t, id); got != kms.StateDeleted {
			t.Errorf("key %s after its date: %s, want Deleted", id, got)
		}
		if _, ok := f.secret(t, id).Data[materialField]; ok {
			t.Errorf("key %s: material still stored after deletion", id)
		}
	}
	if n := f.writes.n.Load(); n != 2 {
		t.Errorf("deleting two keys took %d writes, want 2", n)
	}
	cancelReaper()
	<-done
}

// waitForWaiters waits until the reaper sleeps on the fake clock, so a Step reaches it.
func waitForWaiters(t *testing.T, c *clocktesting.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !c.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("reaper never waited on the clock")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCanceledBeforeDateSurvives(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.create(t, "AES_256", kms.OriginKMS)
	if err := f.do(k.ID, kmstest.Schedule); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(6 * 24 * time.Hour)
	if err := f.do(k.ID, kmstest.Cancel); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(2 * 24 * time.Hour)
	if _, err := f.p.ReapDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.state(t, k.ID); got != kms.StateDisabled {
		t.Errorf("canceled key after its old date: %s, want Disabled", got)
	}
}

func TestObserveNotFound(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, err := f.p.Observe(context.Background(), "no-such-key")
	if !kms.IsNotFound(err) {
		t.Errorf("Observe(no-such-key): %v, want NotFoundError", err)
	}
	if err := f.p.Enable(context.Background(), "no-such-key"); !kms.IsNotFound(err) {
		t.Errorf("Enable(no-such-key): %v, want NotFoundError", err)
	}
}

func TestRootKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.create(t, "AES_256", kms.OriginKMS)
	sealed := f.secret(t, k.ID).Data[materialField]

	// A second provider on the same namespace (a restart) reuses the root key and opens the
	// material the first one sealed.
	again, err := New(f.ctx, kms.Env{Client: env.Client, Namespace: f.ns, Clock: f.clock, Log: logr.Discard()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.sealer.open(k.ID, sealed); err != nil {
		t.Errorf("restarted provider cannot open material: %v", err)
	}

	dir := t.TempDir()
	root := bytes.Repeat([]byte{7}, rootKeySize)
	for name, content := range map[string][]byte{
		"raw":    root,
		"base64": []byte(base64.StdEncoding.EncodeToString(root) + "\n"),
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readRootKeyFile(path)
		if err != nil || !bytes.Equal(got, root) {
			t.Errorf("root key file (%s): %v", name, err)
		}
	}
	short := filepath.Join(dir, "short")
	_ = os.WriteFile(short, []byte("too short"), 0o600)
	if _, err := readRootKeyFile(short); err == nil {
		t.Error("a 9-byte root key file was accepted")
	}
}

// TestReaperMovesPastStuckKey makes the write of one due key fail: the reaper still deletes
// the others, reports the stuck one, and deletes it at a later pass once it can.
func TestReaperMovesPastStuckKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, b := f.create(t, "AES_256", kms.OriginKMS), f.create(t, "AES_256", kms.OriginKMS)
	stuck, other := a.ID, b.ID
	if secretName(b.ID) < secretName(a.ID) {
		stuck, other = b.ID, a.ID // the one the reaper lists first
	}
	for _, id := range []string{stuck, other} {
		if err := f.do(id, kmstest.Schedule); err != nil {
			t.Fatal(err)
		}
	}
	var failing atomic.Bool
	failing.Store(true)
	p, err := New(f.ctx, kms.Env{Client: interceptor.NewClient(env.Client, interceptor.Funcs{
		Update: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.UpdateOption) error {
			if o.GetName() == secretName(stuck) && failing.Load() {
				return apierrors.NewInternalError(errors.New("injected: etcd is unhappy"))
			}
			return c.Update(ctx, o, opts...)
		},
	}), Namespace: f.ns, Clock: f.clock, Log: logr.Discard()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Step(8 * 24 * time.Hour)
	if _, err := p.ReapDue(context.Background()); err == nil || !strings.Contains(err.Error(), stuck) {
		t.Errorf("ReapDue with a stuck key: %v, want an error naming %s", err, stuck)
	}
	if got := stateIn(t, p, other); got != kms.StateDeleted {
		t.Errorf("the key after the stuck one is %s, want Deleted", got)
	}
	failing.Store(false)
	if _, err := p.ReapDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := stateIn(t, p, stuck); got != kms.StateDeleted {
		t.Errorf("the stuck key, once writable, is %s", got)
	}
}

// TestViewForgetsADeletedKeySecret deletes a key's Secret behind the provider's back right
// after the provider wrote it: the key is then no key, and the change is passed on.
func TestViewForgetsADeletedKeySecret(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := f.create(t, "AES_256", kms.OriginKMS)
	if err := f.do(k.ID, kmstest.Disable); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(context.Background(), f.secret(t, k.ID)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := f.p.Observe(context.Background(), k.ID); kms.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a deleted key Secret is still reported")
		}
	}
	select {
	case id := <-f.p.Changes():
		if id != k.ID {
			t.Errorf("change of %s passed on, want %s", id, k.ID)
		}
	case <-time.After(10 * time.Second):
		t.Error("the deletion was not passed on")
	}
}
