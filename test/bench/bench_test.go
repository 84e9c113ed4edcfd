// Package bench measures the operator the way its users see it: bulk changes to many keys,
// from the first write to the last key reporting its new phase, against the floor the same
// apiserver allows in the same run (see floor_test.go). `make bench` runs it.
package bench

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

var (
	keyCount     = flag.Int("keys", 1000, "How many keys BenchmarkBulk changes at once.")
	rounds       = flag.Int("rounds", 3, "How many times BenchmarkBulk runs each step, for the floor and the operator; it reports the medians.")
	restartCount = flag.Int("restart-keys", 10000, "How many keys BenchmarkRestart creates before restarting the manager.")
	writers      = flag.Int("writers", 16, "How many writes the user's tooling makes at once.")
	workers      = flag.Int("workers", 16, "How many keys the floor's workers take at once: the manager's --max-concurrent-reconciles.")
	managerBin   = flag.String("manager", "", "The manager binary to run; built from this module when empty.")
	profiles     = flag.String("profile-dir", "", "When set, a CPU profile of the manager in each step of BenchmarkBulk is written there.")
)

var (
	env *testenv.Env
	// user is the client of the user's tooling; floorUser the same for the floor's FloorKeys,
	// and reactor the floor's own, in place of the manager's. None limits itself, so only the
	// apiserver sets the pace, and each has its own connection, as a user's tooling and the
	// manager do.
	user, floorUser, reactor client.WithWatch
)

func TestMain(m *testing.M) {
	testenv.Main(m, &env, func(e *testenv.Env) error {
		if err := installFloorKind(e.Config); err != nil {
			return err
		}
		floor, err := floorScheme()
		if err != nil {
			return err
		}
		if user, err = unlimited(e.Config, testenv.Scheme); err != nil {
			return err
		}
		if floorUser, err = unlimited(e.Config, floor); err != nil {
			return err
		}
		reactor, err = unlimited(e.Config, floor)
		return err
	})
}

// unlimited is a client with no rate limit, on a connection of its own: client-go shares one
// connection among the clients of a config unless it dials for itself.
func unlimited(c *rest.Config, scheme *kruntime.Scheme) (client.WithWatch, error) {
	cfg := rest.CopyConfig(c)
	cfg.QPS = -1
	cfg.Dial = (&net.Dialer{Timeout: 30 * time.Second}).DialContext
	return client.NewWithWatch(cfg, client.Options{Scheme: scheme})
}

// step is one bulk change: the user's write to every key, and the phase each must reach.
type step struct {
	name  string
	patch []byte
	want  v1alpha1.Phase
}

const stepCreate = "create"

var steps = []step{
	{name: stepCreate, want: v1alpha1.PhaseEnabled},
	{name: "schedule", patch: []byte(`{"spec":{"deletionScheduled":true,"enabled":false}}`), want: v1alpha1.PhasePendingDeletion},
	{name: "cancel", patch: []byte(`{"spec":{"deletionScheduled":false}}`), want: v1alpha1.PhaseDisabled},
	{name: "enable", patch: []byte(`{"spec":{"enabled":true}}`), want: v1alpha1.PhaseEnabled},
}

// The targets of the issue that asked for this benchmark: how far above the floor each step
// may be.
var target = map[string]float64{stepCreate: 3, "schedule": 1.5, "cancel": 1.5, "enable": 1.5}

// BenchmarkBulk creates, schedules the deletion of, cancels it for, and enables -keys keys, as
// the bare floor (Secret and status writes), as the floor (the same and an event) and with the
// operator, taking turns, -rounds times each, and prints for each step the median times, keys/s
// and ratios to the floors, the apiserver's CPU, the manager's CPU and its apiserver requests
// per key by verb and resource, and its peak memory. Each round makes keys of its own. Run it
// once: -benchtime 1x.
func BenchmarkBulk(b *testing.B) {
	ctx := context.Background()
	bin := buildManager(b)
	kubeconfig := filepath.Join(b.TempDir(), "kubeconfig")
	if err := env.KubeConfig(kubeconfig); err != nil {
		b.Fatal(err)
	}
	suffix := fmt.Sprintf("%d", time.Now().UnixNano()%100000)
	floorNS, floorKMS, ns, kmsNS := "floor-"+suffix, "floor-kms-"+suffix, "bench-"+suffix, "cmk-bench-"+suffix
	bareNS, bareKMS := "bare-"+suffix, "bare-kms-"+suffix
	for _, n := range []string{floorNS, floorKMS, bareNS, bareKMS, ns, kmsNS} {
		if err := env.CreateNamespace(ctx, n); err != nil {
			b.Fatal(err)
		}
	}
	apiserver := apiserverPID(env.Config.Host)

	for range b.N {
		r := newReport(*keyCount)
		f := newFloor(floorUser, reactor, floorNS, floorKMS, *writers, *workers, true)
		bare := newFloor(floorUser, reactor, bareNS, bareKMS, *writers, *workers, false)
		m := startManager(b, bin, kubeconfig, kmsNS)
		// A short warm-up of all three, not timed.
		for _, s := range steps {
			if _, err := f.run(ctx, s, roundNames(-1, min(100, *keyCount))); err != nil {
				b.Fatal(err)
			}
			if _, err := bare.run(ctx, s, roundNames(-1, min(100, *keyCount))); err != nil {
				b.Fatal(err)
			}
			if _, err := userRun(ctx, s, ns, roundNames(-1, min(100, *keyCount))); err != nil {
				b.Fatal(err)
			}
			settle(b, m)
		}
		// The floors and the operator take turns, step by step, so that none has the apiserver
		// at its freshest.
		for round := range *rounds {
			for _, s := range steps {
				d, err := bare.run(ctx, s, roundNames(round, *keyCount))
				if err != nil {
					b.Fatalf("bare floor, %s: %v", s.name, err)
				}
				r.bare[s.name] = append(r.bare[s.name], d)

				cpu := cpuSeconds(apiserver)
				if *profiles != "" && round == 0 {
					profileAPIServer(b, 6*time.Second, filepath.Join(*profiles, "apiserver-floor-"+s.name+".pprof"))
				}
				d, err = f.run(ctx, s, roundNames(round, *keyCount))
				if err != nil {
					b.Fatalf("floor, %s: %v", s.name, err)
				}
				r.floor[s.name] = append(r.floor[s.name], d)
				r.floorCPU[s.name] += cpuSeconds(apiserver) - cpu
				if *profiles != "" && round == 0 {
					time.Sleep(7 * time.Second) // the floor's profile is taken
				}

				apiCPU, mgrCPU := cpuSeconds(apiserver), cpuSeconds(m.cmd.Process.Pid)
				before, err := m.scrape()
				if err != nil {
					b.Fatal(err)
				}
				if *profiles != "" && round == 0 {
					m.profile(6*time.Second, filepath.Join(*profiles, "manager-"+s.name+".pprof"))
					profileAPIServer(b, 6*time.Second, filepath.Join(*profiles, "apiserver-operator-"+s.name+".pprof"))
				}
				d, err = userRun(ctx, s, ns, roundNames(round, *keyCount))
				if err != nil {
					b.Fatalf("operator, %s: %v\n%s", s.name, err, m.tail())
				}
				// What the step set off (events, requeues) is counted with it.
				settle(b, m)
				after, err := m.scrape()
				if err != nil {
					b.Fatal(err)
				}
				r.took[s.name] = append(r.took[s.name], d)
				for k, v := range diff(after.requests(), before.requests()) {
					r.requests[s.name][k] += v
				}
				r.apiserverCPU[s.name] += cpuSeconds(apiserver) - apiCPU
				r.managerCPU[s.name] += cpuSeconds(m.cmd.Process.Pid) - mgrCPU
				if *profiles != "" && round == 0 {
					time.Sleep(7 * time.Second)
				}
			}
		}
		_, r.peakMiB, _ = m.memory()
		m.stop(b)
		r.print(os.Stdout)
		for _, s := range steps {
			b.ReportMetric(r.ratio(s.name), s.name+"-x-floor")
			if got := r.ratio(s.name); got > target[s.name] {
				b.Logf("%s took %.2f× the floor, above the target of %.1f×", s.name, got, target[s.name])
			}
		}
		cleanKeys(b, ns)
	}
}

// profileAPIServer writes a CPU profile of the apiserver over the next d to file, in the
// background.
func profileAPIServer(b testing.TB, d time.Duration, file string) {
	cfg := rest.CopyConfig(env.Config)
	cfg.NegotiatedSerializer = clientgoscheme.Codecs.WithoutConversion()
	rc, err := rest.UnversionedRESTClientFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		raw, err := rc.Get().AbsPath("/debug/pprof/profile").Param("seconds", fmt.Sprint(int(d.Seconds()))).DoRaw(context.Background())
		if err == nil {
			_ = os.WriteFile(file, raw, 0o644)
		}
	}()
}

// roundNames are the names of a round's keys; round -1 is the warm-up.
func roundNames(round, n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("r%d-k%05d", round+1, i)
	}
	return names
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	return sorted[len(sorted)/2]
}

// userRun is the user's side of a step with the operator: every key written, *writers at a
// time, timed from the first write to the last key reporting its new phase.
func userRun(ctx context.Context, s step, namespace string, names []string) (time.Duration, error) {
	w, err := watchPhases(ctx, user, namespace)
	if err != nil {
		return 0, err
	}
	defer w.stop()
	start := time.Now()
	err = parallel(ctx, *writers, len(names), func(i int) error {
		if s.name == stepCreate {
			c := newKey(namespace, names[i])
			if err := user.Create(ctx, c); err != nil {
				return err
			}
			w.expect(names[i], s.want, c.Generation)
			return nil
		}
		c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: names[i]}}
		if err := user.Patch(ctx, c, client.RawPatch(types.MergePatchType, s.patch)); err != nil {
			return err
		}
		w.expect(names[i], s.want, c.Generation)
		return nil
	})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	end, err := w.wait(ctx, len(names))
	return end.Sub(start), err
}

// settle waits until the manager is idle: its work queue empty, no worker busy, and no request
// to the apiserver for a while (events are sent after the reconcile that records them), so
// that what a step sets off is counted with it and does not slow the next.
func settle(b testing.TB, m *manager) {
	b.Helper()
	last := -1.0
	for quiet := 0; quiet < 3; {
		mt, err := m.scrape()
		if err != nil {
			b.Fatal(err)
		}
		sent := 0.0
		for _, n := range mt.requests() {
			sent += n
		}
		if mt.sum("workqueue_depth", `name="customermasterkey"`) == 0 && mt.sum("controller_runtime_active_workers", `controller="customermasterkey"`) == 0 && sent == last {
			quiet++
		} else {
			quiet = 0
		}
		last = sent
		time.Sleep(200 * time.Millisecond)
	}
}

// cleanKeys removes the keys of a run, finalizers and all, so the next run starts empty.
func cleanKeys(b testing.TB, namespace string) {
	b.Helper()
	ctx := context.Background()
	list := &v1alpha1.CustomerMasterKeyList{}
	if err := user.List(ctx, list, client.InNamespace(namespace)); err != nil {
		b.Fatal(err)
	}
	err := parallel(ctx, *writers, len(list.Items), func(i int) error {
		c := &list.Items[i]
		if err := user.Patch(ctx, c, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`))); err != nil {
			return client.IgnoreNotFound(err)
		}
		return client.IgnoreNotFound(user.Delete(ctx, c))
	})
	if err != nil {
		b.Fatal(err)
	}
}

// parallel runs do(0..n-1), at most width at a time; the first error stops it.
func parallel(ctx context.Context, width, n int, do func(i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(width, 1) {
		wg.Go(func() {
			for i := range next {
				if err := do(i); err != nil {
					cancel(err)
				}
			}
		})
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

func diff(after, before map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// report is what BenchmarkBulk prints.
type report struct {
	keys int
	// floor is the floor with events, bare the floor without them (see floor).
	floor, bare, took map[string][]time.Duration
	// requests are the manager's, summed over the rounds.
	requests map[string]map[string]float64
	peakMiB  float64
	// CPU seconds the apiserver used in the floor's steps and the operator's, and the manager in
	// the operator's, summed over the rounds: on a machine this size the apiserver's CPU is
	// what runs out.
	floorCPU, apiserverCPU, managerCPU map[string]float64
}

func newReport(keys int) report {
	r := report{keys: keys, floor: map[string][]time.Duration{}, bare: map[string][]time.Duration{}, took: map[string][]time.Duration{},
		requests: map[string]map[string]float64{}, floorCPU: map[string]float64{}, apiserverCPU: map[string]float64{}, managerCPU: map[string]float64{}}
	for _, s := range steps {
		r.requests[s.name] = map[string]float64{}
	}
	return r
}

func (r report) ratio(s string) float64 {
	return median(r.took[s]).Seconds() / median(r.floor[s]).Seconds()
}

func (r report) print(out *os.File) {
	fmt.Fprintf(out, "\n%d keys a step, %d writers, %d workers, median of %d rounds; %s, %d CPUs\n",
		r.keys, *writers, *workers, *rounds, runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU())
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "step\tfloor\toperator\tkeys/s\t× floor\ttarget\tbare floor (no events)\t× bare\tCPU s per round: apiserver floor/operator, manager\tmanager's apiserver requests per key")
	n := float64(*rounds)
	for _, s := range steps {
		took, bare := median(r.took[s.name]), median(r.bare[s.name])
		fmt.Fprintf(w, "%s\t%.2fs\t%.2fs\t%.0f\t%.2f\t≤ %.1f\t%.2fs\t%.2f\t%.1f / %.1f, %.1f\t%s\n", s.name, median(r.floor[s.name]).Seconds(), took.Seconds(),
			float64(r.keys)/took.Seconds(), r.ratio(s.name), target[s.name], bare.Seconds(), took.Seconds()/bare.Seconds(),
			r.floorCPU[s.name]/n, r.apiserverCPU[s.name]/n, r.managerCPU[s.name]/n, perKey(r.requests[s.name], r.keys**rounds))
	}
	_ = w.Flush()
	fmt.Fprintf(out, "manager peak memory (VmHWM): %.0f MiB with %d keys\n", r.peakMiB, r.keys**rounds)
	fmt.Fprintln(out, "KMS calls: the embedded KMS's are its Secret requests above; Huawei's are BenchmarkProviderCalls")
}

// perKey formats requests per key, most first, leaving out what is under 0.01 per key.
func perKey(reqs map[string]float64, keys int) string {
	var parts []string
	for _, k := range mostFirst(reqs) {
		if per := reqs[k] / float64(keys); per >= 0.01 {
			parts = append(parts, fmt.Sprintf("%s %.2f", k, per))
		}
	}
	return strings.Join(parts, ", ")
}

// mostFirst orders the keys of counts by count, then by name.
func mostFirst(counts map[string]float64) []string {
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if c := cmp.Compare(counts[b], counts[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return keys
}

// BenchmarkRestart creates -restart-keys keys with the operator, restarts the manager, and
// reports how long the new manager takes to settle every key again, the requests it makes
// meanwhile, and its memory. A restart over settled keys must write nothing to the KMS and
// read no key Secret one by one: the benchmark fails if it does. Run it once: -benchtime 1x.
func BenchmarkRestart(b *testing.B) {
	ctx := context.Background()
	names := keyNames(*restartCount)
	bin := buildManager(b)
	kubeconfig := filepath.Join(b.TempDir(), "kubeconfig")
	if err := env.KubeConfig(kubeconfig); err != nil {
		b.Fatal(err)
	}
	for range b.N {
		suffix := fmt.Sprintf("%d", time.Now().UnixNano()%100000)
		ns, kmsNS := "restart-"+suffix, "cmk-restart-"+suffix
		for _, n := range []string{ns, kmsNS} {
			if err := env.CreateNamespace(ctx, n); err != nil {
				b.Fatal(err)
			}
		}
		first := startManager(b, bin, kubeconfig, kmsNS)
		created, err := userRun(ctx, steps[0], ns, names)
		if err != nil {
			b.Fatalf("creating %d keys: %v\n%s", len(names), err, first.tail())
		}
		settle(b, first)
		_, createPeak, _ := first.memory()
		first.stop(b)

		start := time.Now()
		m := startManager(b, bin, kubeconfig, kmsNS)
		var mt metrics
		for {
			if mt, err = m.scrape(); err != nil {
				b.Fatal(err)
			}
			if mt.sum("controller_runtime_reconcile_total", `controller="customermasterkey"`) >= float64(len(names)) &&
				mt.sum("workqueue_depth", `name="customermasterkey"`) == 0 &&
				mt.sum("controller_runtime_active_workers", `controller="customermasterkey"`) == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := time.Since(start)
		rss, peak, _ := m.memory()
		if *profiles != "" {
			if err := m.heap(filepath.Join(*profiles, "restart-heap.pprof")); err != nil {
				b.Log(err)
			}
		}
		reqs := mt.requests()
		m.stop(b)

		fmt.Printf("\n%d keys: created in %.1fs (%.0f keys/s), manager peak memory %.0f MiB\n",
			len(names), created.Seconds(), float64(len(names))/created.Seconds(), createPeak)
		fmt.Printf("restart: every key settled again %.2fs after the manager started; memory %.0f MiB then, %.0f MiB at the peak\n", took.Seconds(), rss, peak)
		fmt.Printf("requests during the restart: %s\n", total(reqs))
		b.ReportMetric(took.Seconds(), "restart-s")
		b.ReportMetric(peak, "restart-MiB")
		if n := reqs["create secrets"] + reqs["update secrets"] + reqs["patch secrets"]; n > 0 {
			b.Errorf("the restart wrote key Secrets %.0f times; a restart over settled keys writes nothing to the KMS", n)
		}
		// The root key's Secret is read once at start; no key Secret is read one by one.
		if n := reqs["get secrets"]; n > 1 {
			b.Errorf("the restart read Secrets one by one %.0f times", n)
		}
		if n := reqs["patch customermasterkeys/status"] + reqs["patch customermasterkeys"]; n > 0 {
			b.Errorf("the restart wrote %.0f times to settled keys", n)
		}
		cleanKeys(b, ns)
	}
}

// total formats requests by "verb resource", most first.
func total(reqs map[string]float64) string {
	parts := make([]string, 0, len(reqs))
	for _, k := range mostFirst(reqs) {
		parts = append(parts, fmt.Sprintf("%s %.0f", k, reqs[k]))
	}
	return strings.Join(parts, ", ")
}
