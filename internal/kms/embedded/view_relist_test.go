package embedded

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/watch"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// stallable wraps a watch: while deaf, events are dropped (a connection that silently lost
// them); expire ends it with 410 Gone, so the reflector relists.
type stallable struct {
	inner  watch.Interface
	out    chan watch.Event
	stop   chan struct{}
	once   sync.Once
	deaf   *atomic.Bool
	expire chan struct{}
}

func (s *stallable) Stop() {
	s.once.Do(func() { close(s.stop); s.inner.Stop() })
}
func (s *stallable) ResultChan() <-chan watch.Event { return s.out }

func (s *stallable) run() {
	defer close(s.out)
	for {
		select {
		case <-s.stop:
			return
		case <-s.expire:
			st := apierrors.NewResourceExpired("injected: too old resource version").Status()
			select {
			case s.out <- watch.Event{Type: watch.Error, Object: &st}:
			case <-s.stop:
			}
			return
		case e, ok := <-s.inner.ResultChan():
			if !ok {
				return
			}
			if s.deaf.Load() && e.Type != watch.Bookmark {
				continue
			}
			select {
			case s.out <- e:
			case <-s.stop:
				return
			}
		}
	}
}

// TestViewForgetsAKeyDeletedWhileTheWatchWasDown: this process creates a key while its watch
// silently drops events; a person deletes the key's Secret; the watch then expires and the
// view relists, which leaves the Secret out and tells no handler of it. The key reads as gone,
// its alias is free, and a call on it is refused as not found: no ghost of this process's
// write stays in the view.
func TestViewForgetsAKeyDeletedWhileTheWatchWasDown(t *testing.T) {
	ns := "kms-" + string(uuid.NewUUID())[:8]
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	var deaf atomic.Bool
	var mu sync.Mutex
	var watches []*stallable
	var lists, watchCalls atomic.Int32
	c := interceptor.NewClient(env.Client, interceptor.Funcs{
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if _, ok := list.(*corev1.SecretList); ok {
				lists.Add(1)
			}
			return c.List(ctx, list, opts...)
		},
		Watch: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) (watch.Interface, error) {
			if _, ok := list.(*corev1.SecretList); ok {
				watchCalls.Add(1)
			}
			w, err := c.Watch(ctx, list, opts...)
			if err != nil {
				return nil, err
			}
			s := &stallable{inner: w, out: make(chan watch.Event), stop: make(chan struct{}), deaf: &deaf, expire: make(chan struct{})}
			mu.Lock()
			watches = append(watches, s)
			mu.Unlock()
			go s.run()
			return s, nil
		},
	})
	p, err := New(t.Context(), kms.Env{Client: c, Namespace: ns, Clock: clocktesting.NewFakeClock(time.Now()), Log: logr.Discard()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	deaf.Store(true)
	k, err := p.Create(context.Background(), kms.CreateRequest{Alias: "a/ghost", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "tok-ghost"})
	if err != nil {
		t.Fatal(err)
	}
	// A person deletes the key's Secret.
	del := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secretName(k.ID)}}
	if err := env.Client.Delete(context.Background(), del); err != nil {
		t.Fatal(err)
	}
	before := lists.Load() + watchCalls.Load()
	deaf.Store(false)
	mu.Lock()
	for _, w := range watches {
		select {
		case <-w.expire:
		default:
			close(w.expire)
		}
	}
	mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for lists.Load()+watchCalls.Load() == before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if lists.Load()+watchCalls.Load() == before {
		t.Fatal("the view did not list or watch again after its watch expired")
	}
	time.Sleep(3 * time.Second) // the relist is handed over
	noKey(t, p, k.ID, "a/ghost")
}
