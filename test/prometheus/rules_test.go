// Package prometheus checks config/prometheus/rules.yaml as `promtool check rules` would, with
// Prometheus's own rule parser. It is a module of its own so that Prometheus, a large module,
// is a dependency of this test only, not of the operator.
package prometheus

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// TestPrometheusRules parses the PrometheusRule's groups: every expression must parse, every
// annotation template must be valid, and the alerts docs/operations.md lists must be there.
func TestPrometheusRules(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "prometheus", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Kind string `json:"kind"`
		Spec struct {
			Groups []any `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &rule); err != nil || rule.Kind != "PrometheusRule" {
		t.Fatalf("rules.yaml is not a PrometheusRule: %v", err)
	}
	groups, err := yaml.Marshal(map[string]any{"groups": rule.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	parsed, errs := rulefmt.Parse(groups, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("rules.yaml: %v", err)
	}
	var alerts []string
	for _, g := range parsed.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
		}
	}
	want := []string{"CMKKeyDeletionSoon", "CMKKeysNotReady", "CMKKeyInUseStopped", "CMKKMSErrors", "CMKKeyMetricsAbsent"}
	if !slices.Equal(alerts, want) {
		t.Errorf("alerts %v, want %v", alerts, want)
	}
}
