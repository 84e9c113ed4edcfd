package bench

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// phaseWatch follows the resources of a namespace the way a user's tooling does, a list and
// then a watch, resumed from the last version seen when the apiserver closes it, and notes
// when each expected key first reports its phase for the generation written.
type phaseWatch struct {
	mu     sync.Mutex
	latest map[string]seen
	want   map[string]goal
	done   map[string]time.Time
	change chan struct{}
	cancel context.CancelFunc
	err    error
}

type seen struct {
	phase      v1alpha1.Phase
	observed   int64
	generation int64
}

type goal struct {
	phase      v1alpha1.Phase
	generation int64
}

func watchPhases(ctx context.Context, c client.WithWatch, namespace string) (*phaseWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := &phaseWatch{latest: map[string]seen{}, want: map[string]goal{}, done: map[string]time.Time{},
		change: make(chan struct{}, 1), cancel: cancel}
	version, err := w.list(ctx, c, namespace)
	if err != nil {
		cancel()
		return nil, err
	}
	go w.follow(ctx, c, namespace, version)
	return w, nil
}

// list notes every resource of the namespace as it is now, and returns the list's version.
func (w *phaseWatch) list(ctx context.Context, c client.WithWatch, namespace string) (string, error) {
	list := &v1alpha1.CustomerMasterKeyList{}
	if err := c.List(ctx, list, client.InNamespace(namespace)); err != nil {
		return "", err
	}
	for i := range list.Items {
		w.saw(&list.Items[i])
	}
	return list.ResourceVersion, nil
}

func (w *phaseWatch) follow(ctx context.Context, c client.WithWatch, namespace, version string) {
	for ctx.Err() == nil {
		wi, err := c.Watch(ctx, &v1alpha1.CustomerMasterKeyList{}, client.InNamespace(namespace),
			&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: version, AllowWatchBookmarks: true}})
		if err != nil {
			w.fail(err)
			return
		}
		for ev := range wi.ResultChan() {
			switch o := ev.Object.(type) {
			case *v1alpha1.CustomerMasterKey:
				version = o.ResourceVersion
				if ev.Type != watch.Bookmark {
					w.saw(o)
				}
			case *metav1.Status:
				if ev.Type != watch.Error {
					continue
				}
				if o.Code != http.StatusGone {
					w.fail(fmt.Errorf("watch: %s", o.Message))
					wi.Stop()
					return
				}
				// Too far behind to resume: start again from a list.
				var err error
				if version, err = w.list(ctx, c, namespace); err != nil {
					w.fail(err)
					wi.Stop()
					return
				}
			}
		}
		wi.Stop()
	}
}

func (w *phaseWatch) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.notify()
}

func (w *phaseWatch) notify() {
	select {
	case w.change <- struct{}{}:
	default:
	}
}

func (w *phaseWatch) saw(c *v1alpha1.CustomerMasterKey) {
	now := time.Now()
	w.mu.Lock()
	w.latest[c.Name] = seen{phase: c.Status.Phase, observed: c.Status.ObservedGeneration, generation: c.Generation}
	w.check(c.Name, now)
	w.mu.Unlock()
}

// expect says which phase key must report, for the generation the user's write made.
func (w *phaseWatch) expect(key string, phase v1alpha1.Phase, generation int64) {
	w.mu.Lock()
	w.want[key] = goal{phase, generation}
	w.check(key, time.Now())
	w.mu.Unlock()
}

func (w *phaseWatch) check(key string, now time.Time) {
	t, ok := w.want[key]
	if !ok {
		return
	}
	if _, done := w.done[key]; done {
		return
	}
	if s := w.latest[key]; s.phase == t.phase && s.observed >= t.generation {
		w.done[key] = now
		w.notify()
	}
}

// wait returns when n keys have reported their phase: the moment the last of them did.
func (w *phaseWatch) wait(ctx context.Context, n int) (time.Time, error) {
	for {
		w.mu.Lock()
		err, count := w.err, len(w.done)
		var last time.Time
		if count >= n {
			for _, t := range w.done {
				if t.After(last) {
					last = t
				}
			}
		}
		w.mu.Unlock()
		switch {
		case err != nil:
			return time.Time{}, err
		case count >= n:
			return last, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%d of %d keys reported their phase: %w", count, n, ctx.Err())
		case <-w.change:
		}
	}
}

func (w *phaseWatch) stop() { w.cancel() }
