package plugin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

const benchKeys = 1000

// BenchmarkCancelDeletion1000 times `kubectl cmk cancel-deletion -l … --wait` over 1,000 keys
// against the baseline of the same 1,000 cancellations patched one by one (as a shell loop
// of kubectl patch does) and waited for, in the same run. It reports both in seconds and the
// plugin's time as a ratio of the baseline. Run with `make bench`.
func BenchmarkCancelDeletion1000(b *testing.B) {
	ns := namespace(b)
	for i := range benchKeys {
		create(b, newKey(ns, fmt.Sprintf("k%04d", i), map[string]string{"bench": "yes"}))
	}
	settled(b, ns)
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = 200, 400 // what the plugin uses, so only the approach differs
	loop, err := client.New(cfg, client.Options{Scheme: env.Client.Scheme()})
	if err != nil {
		b.Fatal(err)
	}
	schedule := func() {
		if out, err := kubectlCmk(b, "-n", ns, "schedule-deletion", "-l", "bench=yes", "--wait"); err != nil {
			b.Fatalf("%v\n%s", err, tail(out))
		}
	}

	var plugin, oneByOne time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		schedule()
		b.StartTimer()
		start := time.Now()
		if out, err := kubectlCmk(b, "-n", ns, "cancel-deletion", "-l", "bench=yes", "--wait"); err != nil {
			b.Fatalf("%v\n%s", err, tail(out))
		}
		plugin += time.Since(start)

		b.StopTimer()
		schedule()
		b.StartTimer()
		start = time.Now()
		for i := range benchKeys {
			c := &v1alpha1.CustomerMasterKey{}
			c.Namespace, c.Name = ns, fmt.Sprintf("k%04d", i)
			if err := loop.Patch(context.Background(), c, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"deletionScheduled":false}}`))); err != nil {
				b.Fatal(err)
			}
		}
		if n := settled(b, ns); countPhases(n)[v1alpha1.PhaseDisabled] != benchKeys {
			b.Fatalf("one by one: %v", countPhases(n))
		}
		oneByOne += time.Since(start)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(plugin.Seconds()/n, "s-plugin")
	b.ReportMetric(oneByOne.Seconds()/n, "s-one-by-one")
	b.ReportMetric(plugin.Seconds()/oneByOne.Seconds(), "x-one-by-one")
}
