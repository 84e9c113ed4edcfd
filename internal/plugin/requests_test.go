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
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"

	"github.com/cmk-operator/cmk-operator/internal/requestmetrics"
)

// countingAPIServer puts a proxy that counts requests by verb and resource in front of the
// test's apiserver, and returns a kubeconfig that reaches the apiserver through it.
func countingAPIServer(t *testing.T) (string, func() map[string]int) {
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
	defer func(size int64) { pageSize = size }(pageSize)
	pageSize = 50
	// No operator runs here: the plugin's requests are all that is counted.
	ns := "plugin-paged"
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	for i := range 120 {
		create(t, newKey(ns, fmt.Sprintf("key-%03d", i), map[string]string{"team": "paged"}))
	}
	kubeconfig, counts := countingAPIServer(t)
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
