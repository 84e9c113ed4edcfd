package keymetrics

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

func key(ns, name string, phase v1alpha1.Phase, ready metav1.ConditionStatus, reason string) v1alpha1.CustomerMasterKey {
	k := v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	k.Status.Phase = phase
	if ready != "" {
		k.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: ready, Reason: reason}}
	}
	return k
}

// list is a client.Reader that serves a fixed list and counts its calls.
type list struct {
	client.Reader
	keys  []v1alpha1.CustomerMasterKey
	err   error
	calls int
}

func (l *list) List(_ context.Context, out client.ObjectList, _ ...client.ListOption) error {
	l.calls++
	out.(*v1alpha1.CustomerMasterKeyList).Items = l.keys
	return l.err
}

func TestCollector(t *testing.T) {
	date := metav1.NewTime(time.Unix(1_800_000_000, 0))
	pending := key("a", "old", v1alpha1.PhasePendingDeletion, metav1.ConditionFalse, v1alpha1.ReasonPendingDeletion)
	pending.Status.KeyID, pending.Status.DeletionDate = "k-1", &date
	keys := &list{keys: []v1alpha1.CustomerMasterKey{
		key("a", "app", v1alpha1.PhaseEnabled, metav1.ConditionTrue, v1alpha1.ReasonAvailable),
		key("a", "byok", v1alpha1.PhasePendingImport, metav1.ConditionFalse, v1alpha1.ReasonPendingImport),
		pending,
		key("b", "new", "", "", ""),
	}}
	elected := make(chan struct{})
	c := &Collector{Reader: keys, Elected: elected}
	if n := testutil.CollectAndCount(c); n != 0 || keys.calls != 0 {
		t.Errorf("a replica standing by reported %d series from %d lists, want none", n, keys.calls)
	}
	close(elected)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// got holds each series' value by metric name and label values, as "name{v1,v2}".
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var values []string
			for _, l := range m.GetLabel() {
				values = append(values, l.GetValue())
			}
			got[f.GetName()+"{"+strings.Join(values, ",")+"}"] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"cmk_key_metrics_up{}":                          1,
		"cmk_key_deletion_timestamp_seconds{k-1,old,a}": 1.8e9,
		"cmk_keys_not_ready{a,PendingDeletion}":         1,
		"cmk_keys_not_ready{a,PendingImport}":           1,
		"cmk_keys_not_ready{b,Unknown}":                 1,
		"cmk_keys{a,Enabled}":                           1, "cmk_keys{a,PendingImport}": 1, "cmk_keys{a,PendingDeletion}": 1,
		"cmk_keys{a,Disabled}": 0, "cmk_keys{a,Creating}": 0, "cmk_keys{a,Deleted}": 0,
		"cmk_keys{b,Unknown}": 1, "cmk_keys{b,Enabled}": 0, "cmk_keys{b,Disabled}": 0, "cmk_keys{b,Creating}": 0,
		"cmk_keys{b,PendingDeletion}": 0, "cmk_keys{b,PendingImport}": 0, "cmk_keys{b,Deleted}": 0,
	}
	for series, v := range want {
		if n, ok := got[series]; !ok || n != v {
			t.Errorf("%s = %v (present: %v), want %v", series, n, ok, v)
		}
	}
	for series := range got {
		if _, ok := want[series]; !ok {
			t.Errorf("unexpected series %s", series)
		}
	}
	keys.keys = nil
	keys.err = errors.New("cache not started")
	if families, _ := reg.Gather(); len(families) != 1 || families[0].GetMetric()[0].GetGauge().GetValue() != 0 {
		t.Errorf("a failed list reported %v, want only cmk_key_metrics_up 0", families)
	}
}
