package plugin

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/requestmetrics"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// countingAPIServer puts a proxy that counts requests by verb and resource in front of the
// test's apiserver, and returns a kubeconfig that reaches the apiserver through it. before, if
// set, sees each request before it is passed on.
func countingAPIServer(t *testing.T, before func(*http.Request)) (string, func() map[string]int) {
	t.Helper()
	transport, err := rest.TransportFor(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = transport
	var mu sync.Mutex
	counts := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		verb, resource := requestmetrics.Classify(r)
		mu.Lock()
		counts[verb+" "+resource]++
		mu.Unlock()
		if before != nil {
			before(r)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: proxy, cluster: {server: %q}}]
users: [{name: proxy, user: {}}]
contexts: [{name: proxy, context: {cluster: proxy, user: proxy}}]
current-context: proxy
`, srv.URL)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]int{}
		for k, v := range counts {
			out[k] = v
		}
		return out
	}
}

// TestSelectionIsPagedAndNotReadAgain changes 120 keys by label with a page size of 50: the
// selection is listed in three pages, and each key is patched from the list, never read again.
func TestSelectionIsPagedAndNotReadAgain(t *testing.T) {
	// Not parallel: the page size is the package's. The parallel tests wait for the serial ones.
	defer func(size int64) { pageSize = size }(pageSize)
	pageSize = 50
	// No operator runs here: the plugin's requests are all that is counted.
	ns := "plugin-paged"
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	for i := range 120 {
		create(t, testenv.Key(ns, fmt.Sprintf("key-%03d", i), testenv.Labels(map[string]string{"team": "paged"})))
	}
	kubeconfig, counts := countingAPIServer(t, nil)
	var out, errOut strings.Builder
	cmd := NewCommand(genericiooptions.IOStreams{Out: &out, ErrOut: &errOut})
	cmd.SetArgs([]string{"--kubeconfig", kubeconfig, "-n", ns, "disable", "-l", "team=paged"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("%v\n%s%s", err, out.String(), errOut.String())
	}
	got := counts()
	if got["list customermasterkeys"] != 3 || got["get customermasterkeys"] != 0 || got["patch customermasterkeys"] != 120 {
		t.Errorf("requests %v; want 3 pages listed, no key read again, 120 patches", got)
	}
	if !strings.Contains(out.String(), "120 requested") {
		t.Errorf("output:\n%s", tail(out.String()))
	}
}

// TestChangedSinceTheListIsReadAgain changes a key between the selection's list and its patch:
// the patch, which carries the version listed, is refused, and the key is read again and
// patched on what it is now.
func TestChangedSinceTheListIsReadAgain(t *testing.T) {
	t.Parallel()
	ns := "plugin-changed"
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	create(t, testenv.Key(ns, "key", testenv.Labels(map[string]string{"team": "changed"})))
	var once sync.Once
	kubeconfig, counts := countingAPIServer(t, func(r *http.Request) {
		if r.Method == http.MethodPatch {
			once.Do(func() { // someone else's change, just before the plugin's patch arrives
				c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "key"}}
				if err := env.Client.Patch(context.Background(), c, client.RawPatch(types.MergePatchType,
					[]byte(`{"metadata":{"labels":{"touched":"yes"}}}`))); err != nil {
					t.Error(err)
				}
			})
		}
	})
	out, err := kubectlCmk(t, "--kubeconfig", kubeconfig, "-n", ns, "disable", "-l", "team=changed")
	if err != nil || !strings.Contains(out, "1 requested") {
		t.Fatalf("disable: %v\n%s", err, out)
	}
	if got := counts(); got["patch customermasterkeys"] != 2 || got["get customermasterkeys"] != 1 {
		t.Errorf("requests %v; want the refused patch, one read, and the patch again", got)
	}
	c := &v1alpha1.CustomerMasterKey{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "key"}, c); err != nil {
		t.Fatal(err)
	}
	if c.Spec.Enabled || c.Labels["touched"] != "yes" {
		t.Errorf("enabled %v, labels %v: want disabled, with the other change kept", c.Spec.Enabled, c.Labels)
	}
}

// TestWaitEndsWhenTheListShowsItDone holds back the list that --wait starts from until the
// operator has made the change: the list shows it done, and the wait ends there, without a
// watch that would wait for changes that are not coming until --timeout.
func TestWaitEndsWhenTheListShowsItDone(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	create(t, testenv.Key(ns, "quick"))
	settled(t, ns)
	var patched sync.Once
	var waited, watched atomic.Bool // written by the proxy's handlers
	patchSeen := make(chan struct{})
	kubeconfig, _ := countingAPIServer(t, func(r *http.Request) {
		switch verb, resource := requestmetrics.Classify(r); {
		case verb == "patch" && resource == "customermasterkeys":
			patched.Do(func() { close(patchSeen) })
		case verb == "watch" && resource == "customermasterkeys":
			watched.Store(true)
		case verb == "list" && resource == "customermasterkeys":
			select {
			case <-patchSeen:
			default:
				return // the selection, before the patch
			}
			waited.Store(true)
			deadline := time.Now().Add(30 * time.Second)
			for c := (&v1alpha1.CustomerMasterKey{}); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "quick"}, c)
				if err == nil && c.Status.Phase == v1alpha1.PhaseDisabled && c.Status.ObservedGeneration == c.Generation {
					return
				}
			}
			t.Error("the operator did not disable the key")
		}
	})
	out, err := kubectlCmk(t, "--kubeconfig", kubeconfig, "-n", ns, "disable", "quick", "--wait", "--timeout", "20s")
	if err != nil || !strings.Contains(out, "Enabled → Disabled") || !waited.Load() {
		t.Errorf("disable --wait, the change done before its list (%v): %v\n%s", waited.Load(), err, out)
	}
	if watched.Load() {
		t.Error("--wait watched for changes after its list showed them all done: it waits for --timeout")
	}
}
