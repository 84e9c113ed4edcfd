package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/uuid"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// TestMetricsEndpoint runs the manager as main does, under the ServiceAccount and RBAC that
// config/default deploys, with the metrics endpoint as deployed (HTTPS, authenticated and
// authorized through the apiserver), and reads the key and KMS metrics as Prometheus would
// while keys are created, scheduled for deletion and canceled.
func TestMetricsEndpoint(t *testing.T) {
	ctx := t.Context()
	apply(t, filepath.Join("config", "default", "namespace.yaml"))
	var rbac struct {
		Resources []string `json:"resources"`
	}
	readYAML(t, filepath.Join("config", "rbac", "kustomization.yaml"), &rbac)
	for _, file := range rbac.Resources {
		apply(t, filepath.Join("config", "rbac", file))
	}
	// The manager's flags as the Deployment gives them; only the addresses are this test's,
	// so that it binds no fixed port.
	cfg := deployedFlags(t)
	addr := freeAddress(t)
	cfg.metricsAddr, cfg.probeAddr, cfg.kmsNamespace, cfg.skipNameValidation = addr, "0", "cmk-system", true
	asOperator := rest.CopyConfig(env.Config)
	asOperator.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:cmk-system:cmk-operator"}
	startManager(t, asOperator, cfg)

	reader := serviceAccountToken(t, "monitoring", "prometheus", "cmk-operator-metrics-reader")
	nosy := serviceAccountToken(t, "monitoring", "nosy", "")
	url := "https://" + addr + "/metrics"
	// Without a token the filter answers 401; a token the apiserver does not accept fails its
	// TokenReview, which controller-runtime's filter answers with 500. Either way, no metrics.
	for _, c := range []struct {
		who, token string
		want       int
	}{{"no token", "", http.StatusUnauthorized}, {"a made-up token", "not-a-token", http.StatusInternalServerError},
		{"a ServiceAccount not bound to the metrics reader role", nosy, http.StatusForbidden}} {
		if code, body := get(t, url, c.token); code != c.want || bytes.Contains(body, []byte("cmk_")) {
			t.Errorf("a scrape with %s: HTTP %d, want %d and no metrics", c.who, code, c.want)
		}
	}

	// The KMS counters are the process's: what this test adds is measured from here.
	before := scrape(t, url, reader, func(scraped) bool { return true })
	ns := "metrics-" + string(uuid.NewUUID())[:8]
	if err := env.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"orders", "archive"} {
		cmk := testenv.Key(ns, name, func(c *v1alpha1.CustomerMasterKey) { c.Spec.Alias, c.Spec.Enabled = ns+"/"+name, name == "orders" })
		if err := env.Client.Create(ctx, cmk); err != nil {
			t.Fatal(err)
		}
	}
	// A key to adopt that the KMS does not have is not Ready (Stalled, KeyNotFound).
	missing := testenv.Key(ns, "missing", func(c *v1alpha1.CustomerMasterKey) { c.Spec.KeyID = "0d0466b0-e727-4d9c-b35d-f84bb474a37f" })
	if err := env.Client.Create(ctx, missing); err != nil {
		t.Fatal(err)
	}
	keyID := waitFor(t, ns, "orders", v1alpha1.PhaseEnabled).Status.KeyID
	waitFor(t, ns, "archive", v1alpha1.PhaseDisabled)
	m := scrape(t, url, reader, func(m scraped) bool {
		return m.has("cmk_keys", "namespace", ns, "phase", "Enabled") == 1 && m.has("cmk_keys", "namespace", ns, "phase", "Disabled") == 1 &&
			m.has("cmk_keys_not_ready", "namespace", ns, "reason", v1alpha1.ReasonKeyNotFound) == 1 &&
			m.has("cmk_orphan_sweeps_total", "result", "completed") >= 1
	})
	// The sweep at start completed, with the deployed RBAC: nothing failed, nothing was an orphan.
	m.absent(t, "cmk_orphan_sweeps_total", "result", "failed")
	m.expect(t, 0, "cmk_orphaned_keys_retained")
	m.expect(t, 1, "cmk_keys", "namespace", ns, "phase", "Enabled")
	m.expect(t, 1, "cmk_keys", "namespace", ns, "phase", "Disabled")
	m.expect(t, 0, "cmk_keys", "namespace", ns, "phase", "PendingDeletion")
	// A key disabled as its spec asks is Ready: only the key the KMS does not have is counted.
	m.absent(t, "cmk_keys_not_ready", "namespace", ns, "reason", v1alpha1.ReasonKeyDisabled)
	m.expect(t, 1, "cmk_keys_not_ready", "namespace", ns, "reason", v1alpha1.ReasonKeyNotFound)
	m.absent(t, "cmk_key_deletion_timestamp_seconds", "namespace", ns)
	m.expect(t, 1, "cmk_key_metrics_up")
	m.expectIncrease(t, before, 2, "cmk_kms_requests_total", "provider", "embedded", "operation", "create", "outcome", "success")
	m.expectIncrease(t, before, 1, "cmk_kms_requests_total", "provider", "embedded", "operation", "disable", "outcome", "success")
	create := []string{"provider", "embedded", "operation", "create"}
	if n := m.histogramCount("cmk_kms_request_duration_seconds", create...) - before.histogramCount("cmk_kms_request_duration_seconds", create...); n != 2 {
		t.Errorf("cmk_kms_request_duration_seconds{operation=create} counted %d calls, want 2", n)
	}
	if len(m["controller_runtime_reconcile_total"]) == 0 {
		t.Error("controller-runtime's own metrics are not served")
	}

	setSpec(t, ns, "orders", func(s *v1alpha1.CustomerMasterKeySpec) {
		s.Enabled, s.DeletionScheduled, s.PendingDays = false, true, 7
	})
	pending := waitFor(t, ns, "orders", v1alpha1.PhasePendingDeletion)
	// A StorageClass that names the key, found after its deletion was scheduled: the alert's case.
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "evs-" + ns}, Provisioner: "everest-csi-provisioner",
		Parameters: map[string]string{"everest.io/crypt-key-id": keyID}}
	if err := env.Client.Create(ctx, sc); err != nil {
		t.Fatal(err)
	}
	m = scrape(t, url, reader, func(m scraped) bool {
		return m.has("cmk_keys", "namespace", ns, "phase", "PendingDeletion") == 1 &&
			m.has("cmk_key_consumers", "namespace", ns, "name", "orders", "key_id", keyID, "phase", "PendingDeletion") == 1
	})
	date := float64(pending.Status.DeletionDate.Unix())
	m.expect(t, date, "cmk_key_deletion_timestamp_seconds", "namespace", ns, "name", "orders", "key_id", keyID)
	if left := time.Until(time.Unix(int64(date), 0)); left < 7*24*time.Hour-time.Hour || left > 7*24*time.Hour+time.Hour {
		t.Errorf("the deletion countdown reads %v, want about 7 days", left)
	}
	m.expect(t, 0, "cmk_keys", "namespace", ns, "phase", "Enabled")
	m.absent(t, "cmk_keys_not_ready", "namespace", ns, "reason", v1alpha1.ReasonPendingDeletion)
	m.expectIncrease(t, before, 1, "cmk_kms_requests_total", "provider", "embedded", "operation", "schedule_deletion", "outcome", "success")
	// Every metric the alerts read is one the manager serves (now that a key is pending deletion, all are).
	for _, name := range ruleMetrics(t) {
		if len(m[name]) == 0 {
			t.Errorf("config/prometheus/rules.yaml reads %s, which the manager does not serve", name)
		}
	}

	if err := env.Client.Delete(ctx, sc); err != nil {
		t.Fatal(err)
	}
	setSpec(t, ns, "orders", func(s *v1alpha1.CustomerMasterKeySpec) { s.DeletionScheduled = false })
	waitFor(t, ns, "orders", v1alpha1.PhaseDisabled)
	m = scrape(t, url, reader, func(m scraped) bool { return m.has("cmk_keys", "namespace", ns, "phase", "Disabled") == 2 })
	m.absent(t, "cmk_key_deletion_timestamp_seconds", "namespace", ns)
	m.expect(t, 0, "cmk_keys", "namespace", ns, "phase", "PendingDeletion")
	m.absent(t, "cmk_keys_not_ready", "namespace", ns, "reason", v1alpha1.ReasonKeyDisabled)
	m.expectIncrease(t, before, 1, "cmk_kms_requests_total", "provider", "embedded", "operation", "cancel_deletion", "outcome", "success")

}

// ruleMetrics lists the cmk_ metrics the alerting rules read. (test/prometheus parses the
// rules with Prometheus's parser; a match of metric names is enough here.)
func ruleMetrics(t *testing.T) []string {
	t.Helper()
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Expr string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	readYAML(t, filepath.Join("config", "prometheus", "rules.yaml"), &rule)
	var names []string
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			for _, name := range regexp.MustCompile(`\bcmk_[a-z_]+\b`).FindAllString(r.Expr, -1) {
				if !slices.Contains(names, name) {
					names = append(names, name)
				}
			}
		}
	}
	if len(names) == 0 {
		t.Fatal("rules.yaml reads no cmk_ metric")
	}
	return names
}

func readYAML(t *testing.T, file string, into any) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, into); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// deployment is the part of config/manager/manager.yaml the tests read.
type deployment struct {
	Spec struct {
		Template struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec struct {
				Containers []struct {
					Args  []string `json:"args"`
					Ports []struct {
						Name          string `json:"name"`
						ContainerPort int    `json:"containerPort"`
					} `json:"ports"`
				} `json:"containers"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

// deployedFlags parses the manager's arguments in config/manager/manager.yaml as main does.
func deployedFlags(t *testing.T) managerConfig {
	t.Helper()
	var d deployment
	readYAML(t, filepath.Join("config", "manager", "manager.yaml"), &d)
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	cfg := bindFlags(fs)
	if err := fs.Parse(d.Spec.Template.Spec.Containers[0].Args); err != nil {
		t.Fatalf("config/manager/manager.yaml: %v", err)
	}
	return *cfg
}

// TestMetricsWiring follows a scrape through config: the ServiceMonitor's port to the Service,
// the Service to the Deployment's pods and container port, that port to the address the
// manager's arguments bind, over HTTPS, with the key's own namespace label kept.
func TestMetricsWiring(t *testing.T) {
	var monitor struct {
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			Endpoints []struct {
				Port        string `json:"port"`
				Scheme      string `json:"scheme"`
				HonorLabels bool   `json:"honorLabels"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	readYAML(t, filepath.Join("config", "prometheus", "monitor.yaml"), &monitor)
	var service struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			Selector map[string]string `json:"selector"`
			Ports    []struct {
				Name       string `json:"name"`
				TargetPort string `json:"targetPort"`
			} `json:"ports"`
		} `json:"spec"`
	}
	readYAML(t, filepath.Join("config", "default", "metrics_service.yaml"), &service)
	var d deployment
	readYAML(t, filepath.Join("config", "manager", "manager.yaml"), &d)

	for k, v := range monitor.Spec.Selector.MatchLabels {
		if service.Metadata.Labels[k] != v {
			t.Errorf("the ServiceMonitor selects %s=%s, which the metrics Service does not have", k, v)
		}
	}
	for k, v := range service.Spec.Selector {
		if d.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("the metrics Service selects pods with %s=%s, which the manager's pods do not have", k, v)
		}
	}
	if len(monitor.Spec.Endpoints) != 1 || len(service.Spec.Ports) != 1 {
		t.Fatalf("want one ServiceMonitor endpoint and one Service port")
	}
	ep, port := monitor.Spec.Endpoints[0], service.Spec.Ports[0]
	if ep.Port != port.Name || ep.Scheme != "https" || !ep.HonorLabels {
		t.Errorf("ServiceMonitor endpoint %+v: want port %q, scheme https and honorLabels (the key metrics' namespace is the key's)", ep, port.Name)
	}
	container := 0
	for _, p := range d.Spec.Template.Spec.Containers[0].Ports {
		if p.Name == port.TargetPort {
			container = p.ContainerPort
		}
	}
	cfg := deployedFlags(t)
	if _, bound, _ := net.SplitHostPort(cfg.metricsAddr); container == 0 || bound != strconv.Itoa(container) || !cfg.metricsTLS {
		t.Errorf("the Service targets container port %q (%d); the manager serves metrics on %q, HTTPS %v", port.TargetPort, container, cfg.metricsAddr, cfg.metricsTLS)
	}
	// The Huawei overlay replaces the arguments: it must keep the metrics endpoint.
	raw, err := os.ReadFile(filepath.Join("config", "huaweicloud", "manager_huaweicloud.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte("--metrics-bind-address="+cfg.metricsAddr)) {
		t.Errorf("config/huaweicloud's arguments do not serve metrics on %s", cfg.metricsAddr)
	}
}

// TestMetricsCertPath refuses a certificate directory that does not hold the certificate,
// which controller-runtime would silently replace with a self-signed one.
func TestMetricsCertPath(t *testing.T) {
	dir := t.TempDir()
	if _, err := metricsOptions(managerConfig{metricsTLS: true, metricsCerts: dir}); err == nil {
		t.Error("an empty --metrics-cert-path was taken")
	}
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if opts, err := metricsOptions(managerConfig{metricsTLS: true, metricsCerts: dir}); err != nil || opts.CertDir != dir {
		t.Errorf("a --metrics-cert-path with both files: %v, CertDir %q", err, opts.CertDir)
	}
	if _, err := metricsOptions(managerConfig{metricsTLS: false, metricsCerts: dir}); err == nil {
		t.Error("--metrics-cert-path was taken with --metrics-secure=false")
	}
}

// startManager runs the manager until the test ends.
func startManager(t *testing.T, cfg *rest.Config, mc managerConfig) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, mc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
}

// apply creates the objects of a manifest file.
func apply(t *testing.T, file string) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		if err := env.Client.Create(t.Context(), obj); client.IgnoreAlreadyExists(err) != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
}

// serviceAccountToken makes a ServiceAccount, bound to clusterRole unless that is empty, and
// returns a token for it.
func serviceAccountToken(t *testing.T, ns, name, clusterRole string) string {
	t.Helper()
	ctx := t.Context()
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); client.IgnoreAlreadyExists(err) != nil {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if err := env.Client.Create(ctx, sa); client.IgnoreAlreadyExists(err) != nil {
		t.Fatal(err)
	}
	if clusterRole != "" {
		binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole}}
		if err := env.Client.Create(ctx, binding); client.IgnoreAlreadyExists(err) != nil {
			t.Fatal(err)
		}
	}
	token := &authenticationv1.TokenRequest{}
	if err := env.Client.SubResource("token").Create(ctx, sa, token); err != nil {
		t.Fatal(err)
	}
	return token.Status.Token
}

func freeAddress(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// scraper skips verifying the manager's self-signed certificate: what is checked here is who
// may scrape.
var scraper = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

// get fetches url with a bearer token, waiting for the endpoint to come up.
func get(t *testing.T, url, token string) (int, []byte) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := scraper.Do(req)
		if err == nil {
			body, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			return resp.StatusCode, body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scraped is a scrape, by metric family.
type scraped map[string][]*dto.Metric

// scrape reads the endpoint until ready holds of what it serves (the cache may lag the
// apiserver by a moment).
func scrape(t *testing.T, url, token string, ready func(scraped) bool) scraped {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get(t, url, token)
		if code != http.StatusOK {
			t.Fatalf("an authorized scrape: HTTP %d: %s", code, body)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		m := scraped{}
		for name, f := range families {
			m[name] = f.GetMetric()
		}
		if ready(m) || time.Now().After(deadline) {
			return m
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// find returns the series of name with these label values (pairs of name and value), or nil.
func (m scraped) find(name string, labels ...string) []*dto.Metric {
	var out []*dto.Metric
	for _, metric := range m[name] {
		have := map[string]string{}
		for _, l := range metric.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if match {
			out = append(out, metric)
		}
	}
	return out
}

// has is the value of the one series of name with these labels; -1 when there is none.
func (m scraped) has(name string, labels ...string) float64 {
	found := m.find(name, labels...)
	if len(found) != 1 {
		return -1
	}
	switch f := found[0]; {
	case f.Gauge != nil:
		return f.GetGauge().GetValue()
	case f.Counter != nil:
		return f.GetCounter().GetValue()
	}
	return -1
}

func (m scraped) expect(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	if got := m.has(name, labels...); got != want {
		t.Errorf("%s%v = %v, want %v (-1: no such series)", name, labels, got, want)
	}
}

// expectIncrease checks that a counter grew by want since before.
func (m scraped) expectIncrease(t *testing.T, before scraped, want float64, name string, labels ...string) {
	t.Helper()
	if got := m.has(name, labels...) - max(before.has(name, labels...), 0); got != want {
		t.Errorf("%s%v rose by %v, want %v", name, labels, got, want)
	}
}

func (m scraped) absent(t *testing.T, name string, labels ...string) {
	t.Helper()
	if found := m.find(name, labels...); len(found) != 0 {
		t.Errorf("%s%v: %d series, want none", name, labels, len(found))
	}
}

func (m scraped) histogramCount(name string, labels ...string) uint64 {
	found := m.find(name, labels...)
	if len(found) != 1 {
		return 0
	}
	return found[0].GetHistogram().GetSampleCount()
}

func waitFor(t *testing.T, ns, name string, phase v1alpha1.Phase) *v1alpha1.CustomerMasterKey {
	t.Helper()
	cmk := &v1alpha1.CustomerMasterKey{}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, cmk); err != nil {
			t.Fatal(err)
		}
		if cmk.Status.Phase == phase && cmk.Status.ObservedGeneration == cmk.Generation {
			return cmk
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s is %q, want %s", ns, name, cmk.Status.Phase, phase)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func setSpec(t *testing.T, ns, name string, change func(*v1alpha1.CustomerMasterKeySpec)) {
	t.Helper()
	cmk := &v1alpha1.CustomerMasterKey{}
	if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, cmk); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(cmk.DeepCopy())
	change(&cmk.Spec)
	if err := env.Client.Patch(t.Context(), cmk, patch); err != nil {
		t.Fatal(fmt.Errorf("patching %s/%s: %w", ns, name, err))
	}
}
