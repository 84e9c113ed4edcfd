package keymetrics

import (
	"context"
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
	calls int
}

func (l *list) List(_ context.Context, out client.ObjectList, _ ...client.ListOption) error {
	l.calls++
	out.(*v1alpha1.CustomerMasterKeyList).Items = l.keys
	return nil
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
	want := `
# HELP cmk_key_deletion_timestamp_seconds When the KMS will delete the key, in seconds since the Unix epoch, for each key pending deletion (status.deletionDate).
# TYPE cmk_key_deletion_timestamp_seconds gauge
cmk_key_deletion_timestamp_seconds{key_id="k-1",name="old",namespace="a"} 1.8e+09
# HELP cmk_keys_not_ready CustomerMasterKeys whose Ready condition is not True, by namespace and the condition's reason. KeyDisabled, PendingDeletion, KeyDeleted and NotCreated are what the spec asks for; the other reasons wait on someone.
# TYPE cmk_keys_not_ready gauge
cmk_keys_not_ready{namespace="a",reason="PendingDeletion"} 1
cmk_keys_not_ready{namespace="a",reason="PendingImport"} 1
cmk_keys_not_ready{namespace="b",reason="Unknown"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "cmk_key_deletion_timestamp_seconds", "cmk_keys_not_ready"); err != nil {
		t.Error(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	got := map[string]float64{}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "cmk_keys" {
			continue
		}
		for _, m := range f.GetMetric() {
			got[m.GetLabel()[0].GetValue()+"/"+m.GetLabel()[1].GetValue()] = m.GetGauge().GetValue()
		}
	}
	for series, n := range map[string]float64{"a/Enabled": 1, "a/PendingImport": 1, "a/PendingDeletion": 1, "a/Disabled": 0,
		"a/Creating": 0, "a/Deleted": 0, "b/Unknown": 1, "b/Enabled": 0} {
		if v, ok := got[series]; !ok || v != n {
			t.Errorf("cmk_keys{%s} = %v (present: %v), want %v", series, v, ok, n)
		}
	}
	if len(got) != 13 {
		t.Errorf("cmk_keys has %d series, want 6 phases for each of 2 namespaces and b's Unknown: %v", len(got), got)
	}
}
