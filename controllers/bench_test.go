package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// BenchmarkReconcile measures reconciles against the real apiserver and reports, per op:
// status writes, Secret writes (the embedded KMS), and the time of a reconcile as a ratio of
// a baseline measured in the same iterations: reading the resource and its key Secret once
// each, the least any reconcile must do. Run with `make bench`.
func BenchmarkReconcile(b *testing.B) {
	for _, tc := range []struct {
		name string
		// change, when set, alters the spec before iteration i so the reconcile has a transition to make.
		change func(i int) map[string]any
		want   [3]int64 // status, object, secret writes per op
	}{
		{name: "NoOp", want: [3]int64{0, 0, 0}},
		{name: "EnableDisable", change: func(i int) map[string]any { return map[string]any{"enabled": i%2 == 1} }, want: [3]int64{1, 0, 1}},
		{name: "ScheduleCancel", change: func(i int) map[string]any {
			if i%2 == 0 {
				return map[string]any{"deletionScheduled": true, "enabled": false}
			}
			return map[string]any{"deletionScheduled": false}
		}, want: [3]int64{1, 0, 1}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := newHarness(b)
			r, w := directReconciler(h)
			h.create(h.cmk("bench"))
			ctx := context.Background()
			req := reconcile.Request{NamespacedName: client.ObjectKey{Namespace: h.ns, Name: "bench"}}
			if _, err := r.Reconcile(ctx, req); err != nil {
				b.Fatal(err)
			}
			keyID := h.get("bench").Status.KeyID
			var reconcileTime, baselineTime time.Duration
			var total [3]int64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if tc.change != nil {
					b.StopTimer()
					h.patch("bench", tc.change(i))
					b.StartTimer()
				}
				start := time.Now()
				if err := baselineReads(ctx, h, keyID); err != nil {
					b.Fatal(err)
				}
				baselineTime += time.Since(start)

				w.reset()
				start = time.Now()
				if _, err := r.Reconcile(ctx, req); err != nil {
					b.Fatal(err)
				}
				reconcileTime += time.Since(start)
				got := w.get()
				for j := range total {
					total[j] += got[j]
				}
				if got != tc.want {
					b.Fatalf("iteration %d wrote [status, object, secret] = %v, want %v", i, got, tc.want)
				}
			}
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(float64(total[0])/n, "status-writes/op")
			b.ReportMetric(float64(total[2])/n, "secret-writes/op")
			b.ReportMetric(float64(reconcileTime)/float64(baselineTime), "x-baseline")
			b.Logf("%s: reconcile %v/op, baseline %v/op", tc.name, reconcileTime/time.Duration(b.N), baselineTime/time.Duration(b.N))
		})
	}
}

// baselineReads is the floor of a reconcile's cost: one read of the resource, one of its key.
func baselineReads(ctx context.Context, h *harness, keyID string) error {
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: h.ns, Name: "bench"}, &v1alpha1.CustomerMasterKey{}); err != nil {
		return err
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: h.kmsNS, Name: "cmk-" + keyID}, &corev1.Secret{}); err != nil {
		return fmt.Errorf("reading key secret: %w", err)
	}
	return nil
}
