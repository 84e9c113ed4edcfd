// Package keymetrics reports the CustomerMasterKeys on the manager's metrics endpoint: how many
// there are by namespace and phase, which are not Ready and why, and when each key pending
// deletion will be deleted. It reads them from the manager's cache when scraped, the way
// kube-state-metrics does, so the reconciler keeps no tally that could drift from the keys.
package keymetrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

var (
	keysDesc = prometheus.NewDesc("cmk_keys",
		"CustomerMasterKeys by namespace and phase (status.phase; Unknown before the operator first reported the key).",
		[]string{"namespace", "phase"}, nil)
	notReadyDesc = prometheus.NewDesc("cmk_keys_not_ready",
		"CustomerMasterKeys whose Ready condition is not True, by namespace and the condition's reason (Unknown before the operator first reported the key). "+
			"KeyDisabled, PendingDeletion, KeyDeleted and NotCreated are what the spec asks for; PendingImport waits for key material; the other reasons wait on someone.",
		[]string{"namespace", "reason"}, nil)
	deletionDesc = prometheus.NewDesc("cmk_key_deletion_timestamp_seconds",
		"When the KMS will delete the key, in seconds since the Unix epoch, for each key pending deletion (status.deletionDate).",
		[]string{"namespace", "name", "key_id"}, nil)
	consumersDesc = prometheus.NewDesc("cmk_key_consumers",
		"Consumers of each key in use (status.usage.consumers: StorageClasses, PersistentVolumes, annotated workloads, the apiserver), with the key's phase; "+
			"keys nothing uses have no series.",
		[]string{"namespace", "name", "key_id", "phase"}, nil)
	upDesc = prometheus.NewDesc("cmk_key_metrics_up",
		"1 when this manager leads and listed the keys for this scrape; 0 when it leads and could not (the key metrics are then missing). "+
			"A manager standing by reports no key metrics, this one included.",
		nil, nil)
)

// phases are reported for every namespace that has keys, with 0 for none, so that a query for
// one phase finds a series, and a count that drops to 0 is seen as 0 rather than gone.
var phases = []v1alpha1.Phase{
	v1alpha1.PhaseCreating, v1alpha1.PhaseEnabled, v1alpha1.PhaseDisabled,
	v1alpha1.PhasePendingDeletion, v1alpha1.PhasePendingImport, v1alpha1.PhaseDeleted,
}

// unknownPhase labels keys that have no status.phase yet.
const unknownPhase = "Unknown"

// listTimeout bounds a scrape's wait for the cache: a scrape before the cache has synced
// reports an error rather than hanging.
const listTimeout = 5 * time.Second

// Collector is a prometheus.Collector of the keys in Reader, normally the manager's cache.
type Collector struct {
	Reader client.Reader
	// Elected is closed once this manager leads (the manager's Elected()). Until then it
	// reports no keys, so that replicas standing by do not report them again: only the one
	// acting on the keys does.
	Elected <-chan struct{}
}

// Describe sends the metrics' descriptions.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- keysDesc
	ch <- notReadyDesc
	ch <- deletionDesc
	ch <- consumersDesc
	ch <- upDesc
}

// Collect lists the keys and reports them.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	select {
	case <-c.Elected:
	default:
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
	defer cancel()
	var list v1alpha1.CustomerMasterKeyList
	// The objects are only read, so the cache's own copies do; 10,000 deep copies per
	// scrape would cost more than the rest of the scrape.
	if err := c.Reader.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, 1)
	for _, m := range tally(list.Items) {
		ch <- m
	}
}

type namespaced struct{ namespace, value string }

// tally turns keys into the metrics' values.
func tally(keys []v1alpha1.CustomerMasterKey) []prometheus.Metric {
	byPhase := map[namespaced]int{}
	notReady := map[namespaced]int{}
	var out []prometheus.Metric
	for i := range keys {
		cmk := &keys[i]
		ns := cmk.Namespace
		if _, seen := byPhase[namespaced{ns, string(phases[0])}]; !seen {
			for _, p := range phases {
				byPhase[namespaced{ns, string(p)}] = 0
			}
		}
		phase := string(cmk.Status.Phase)
		if phase == "" {
			phase = unknownPhase
		}
		byPhase[namespaced{ns, phase}]++
		if ready := meta.FindStatusCondition(cmk.Status.Conditions, v1alpha1.ConditionReady); ready == nil {
			notReady[namespaced{ns, unknownPhase}]++
		} else if ready.Status != metav1.ConditionTrue {
			notReady[namespaced{ns, ready.Reason}]++
		}
		if u := cmk.Status.Usage; u != nil && u.Consumers > 0 {
			out = append(out, prometheus.MustNewConstMetric(consumersDesc, prometheus.GaugeValue, float64(u.Consumers), ns, cmk.Name, cmk.Status.KeyID, phase))
		}
		if cmk.Status.Phase == v1alpha1.PhasePendingDeletion && cmk.Status.DeletionDate != nil {
			out = append(out, prometheus.MustNewConstMetric(deletionDesc, prometheus.GaugeValue,
				float64(cmk.Status.DeletionDate.Unix()), ns, cmk.Name, cmk.Status.KeyID))
		}
	}
	for k, n := range byPhase {
		out = append(out, prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, float64(n), k.namespace, k.value))
	}
	for k, n := range notReady {
		out = append(out, prometheus.MustNewConstMetric(notReadyDesc, prometheus.GaugeValue, float64(n), k.namespace, k.value))
	}
	return out
}
