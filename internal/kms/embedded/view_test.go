package embedded

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/watch"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// TestViewDropsAWriteOfASecretDeletedMeanwhile: a person deletes a key Secret between the
// apiserver's answer to this process's Update and saw(), and the watch delivers the deletion first.
// The key is then no key: not observed, holding no alias, refused as not found.
func TestViewDropsAWriteOfASecretDeletedMeanwhile(t *testing.T) {
	t.Parallel()
	ns := "kms-" + string(uuid.NewUUID())[:8]
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	var p *Provider
	var armed atomic.Bool
	c := interceptor.NewClient(env.Client, interceptor.Funcs{
		Update: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.UpdateOption) error {
			if err := c.Update(ctx, o, opts...); err != nil {
				return err
			}
			if armed.Load() {
				// The person's delete, and the watch delivering it, before saw().
				del := &corev1.Secret{}
				del.Namespace, del.Name = o.GetNamespace(), o.GetName()
				if err := env.Client.Delete(ctx, del); err != nil {
					t.Errorf("delete: %v", err)
				}
				deadline := time.Now().Add(10 * time.Second)
				for time.Now().Before(deadline) {
					if _, ok := p.view.cached(o.GetName()); !ok {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			return nil
		},
	})
	var err error
	p, err = New(t.Context(), kms.Env{Client: c, Namespace: ns, Clock: clocktesting.NewFakeClock(time.Now()), Log: logr.Discard()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	k, err := p.Create(context.Background(), kms.CreateRequest{Alias: "a/b", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "tok-1"})
	if err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	if err := p.Disable(context.Background(), k.ID); err != nil {
		t.Fatal(err)
	}
	armed.Store(false)
	time.Sleep(2 * time.Second) // plenty for the watch
	s := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: secretName(k.ID)}, s); err == nil {
		t.Fatalf("secret still exists")
	}
	noKey(t, p, k.ID, "a/b")
}

// noKey checks that a key whose Secret was deleted is no key: not observed, holding no alias,
// refused as not found; no phantom of this process's write of it stays in the view.
func noKey(t *testing.T, p *Provider, id, alias string) {
	t.Helper()
	got, err := p.Observe(context.Background(), id)
	if !kms.IsNotFound(err) {
		t.Errorf("Observe of a deleted key: %+v, %v; want NotFound (phantom from the own overlay)", got.State, err)
	}
	if err := p.checkAliasFree(context.Background(), alias, "other"); err != nil {
		t.Errorf("alias of a deleted key still held by the phantom: %v", err)
	}
	if err := p.Enable(context.Background(), id); !kms.IsNotFound(err) {
		t.Errorf("Enable of a deleted key: %v; want NotFound", err)
	}
}

// TestViewRefusedFailsAtOnce starts a provider that may not list Secrets: it fails at once,
// saying what it needs, rather than wait for a refusal that waiting does not cure.
func TestViewRefusedFailsAtOnce(t *testing.T) {
	t.Parallel()
	ns := "kms-" + string(uuid.NewUUID())[:8]
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	// A first start makes the root key, so the second's first list is its view's.
	if _, err := New(t.Context(), kms.Env{Client: env.Client, Namespace: ns, Log: logr.Discard()}, Options{}); err != nil {
		t.Fatal(err)
	}
	c := interceptor.NewClient(env.Client, interceptor.Funcs{
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if _, ok := list.(*corev1.SecretList); ok {
				return apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "", errors.New("injected: no list"))
			}
			return c.List(ctx, list, opts...)
		},
		Watch: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) (watch.Interface, error) {
			if _, ok := list.(*corev1.SecretList); ok {
				return nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "", errors.New("injected: no watch"))
			}
			return c.Watch(ctx, list, opts...)
		},
	})
	start := time.Now()
	_, err := New(t.Context(), kms.Env{Client: c, Namespace: ns, Clock: clocktesting.NewFakeClock(time.Now()), Log: logr.Discard()}, Options{})
	if err == nil || !strings.Contains(err.Error(), "config/rbac") || !apierrors.IsForbidden(err) {
		t.Fatalf("New without the right to list Secrets: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the refusal took %v to report", took)
	}
}

// TestOwnWritesAreNotNews: keys this process creates and changes are never passed on as
// changed elsewhere, however the answers to its writes and the watch interleave. The reflector
// receives a version before the informer stores it, and the store has it before the handlers
// are told: judged by either, the answer to a write passed for a Secret deleted meanwhile or
// for one already seen, and the handlers' delivery of it then for someone else's change.
// TestDeletionAtDate read such notifications as the reaper's.
func TestOwnWritesAreNotNews(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const keys = 40
	ids := make([]string, keys)
	each := func(do func(i int) error) {
		t.Helper()
		errs := make(chan error, keys)
		for i := range keys {
			go func() { errs <- do(i) }()
		}
		for range keys {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	// delivered waits until the watch has handed over every key in state, and then for the
	// handlers, which are told after the store is written.
	delivered := func(state kms.State) {
		t.Helper()
		for _, id := range ids {
			deadline := time.Now().Add(10 * time.Second)
			for {
				if s, ok := f.p.view.cached(secretName(id)); ok {
					if r, err := readRecord(s); err == nil && r.State == state {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("the watch did not deliver key %s %s", id, state)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		time.Sleep(100 * time.Millisecond)
		select {
		case id := <-f.p.Changes():
			t.Errorf("key %s, written by this process only, was passed on as changed elsewhere", id)
		default:
		}
	}
	each(func(i int) error {
		k, err := f.p.Create(context.Background(), kms.CreateRequest{Alias: "own/" + string(uuid.NewUUID()), KeySpec: "AES_256",
			KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: string(uuid.NewUUID())})
		ids[i] = k.ID
		return err
	})
	delivered(kms.StateEnabled)
	each(func(i int) error { return f.p.Disable(context.Background(), ids[i]) })
	delivered(kms.StateDisabled)
}
