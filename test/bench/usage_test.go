package bench

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

var (
	usageKeys    = flag.Int("usage-keys", 10000, "How many keys BenchmarkUsage makes, each with a PersistentVolume on it.")
	usageClasses = flag.Int("usage-classes", 1000, "How many StorageClasses BenchmarkUsage makes, each on one of the keys.")
	usageChanges = flag.Int("usage-changes", 20, "How many consumer changes BenchmarkUsage times, one at a time.")
)

// BenchmarkUsage measures the key-in-use index at scale: -usage-keys keys with a
// PersistentVolume each and -usage-classes StorageClasses, then -usage-changes consumers
// created one at a time. It reports how much the manager's memory grew with the consumers
// (target: 50 MiB at most), and how long a new consumer takes to reach the key's status.usage,
// against the floor: how long the apiserver takes to deliver the consumer itself to a watch
// (target: 2 s at most).
func BenchmarkUsage(b *testing.B) {
	ctx := context.Background()
	bin := buildManager(b)
	kubeconfig := filepath.Join(b.TempDir(), "kubeconfig")
	if err := env.KubeConfig(kubeconfig); err != nil {
		b.Fatal(err)
	}
	names := keyNames(*usageKeys)
	for range b.N {
		suffix := fmt.Sprintf("%d", time.Now().UnixNano()%100000)
		ns, kmsNS := "usage-"+suffix, "cmk-usage-"+suffix
		for _, n := range []string{ns, kmsNS} {
			if err := env.CreateNamespace(ctx, n); err != nil {
				b.Fatal(err)
			}
		}
		m := startManager(b, bin, kubeconfig, kmsNS)
		if _, err := userRun(ctx, steps[0], ns, names); err != nil {
			b.Fatalf("creating %d keys: %v\n%s", len(names), err, m.tail())
		}
		settle(b, m)
		ids := keyIDs(b, ns)
		before, _, _ := m.memory()

		start := time.Now()
		err := parallel(ctx, *writers, len(names)+*usageClasses, func(i int) error {
			if i < len(names) {
				return user.Create(ctx, volumeOn(fmt.Sprintf("pv-%s-%05d", suffix, i), ids[names[i]]))
			}
			j := i - len(names)
			return user.Create(ctx, classOn(fmt.Sprintf("sc-%s-%04d", suffix, j), ids[names[j%len(names)]]))
		})
		if err != nil {
			b.Fatal(err)
		}
		counted := waitCounted(b, ns, len(names)+*usageClasses)
		settle(b, m)
		after, peak, _ := m.memory()
		fmt.Printf("\n%d keys, %d PersistentVolumes and %d StorageClasses on them: every consumer counted %.1fs after the first was made\n",
			len(names), len(names), *usageClasses, counted.Sub(start).Seconds())
		fmt.Printf("manager memory: %.0f MiB before the consumers, %.0f MiB after (+%.0f MiB; target +50), %.0f MiB at the peak\n",
			before, after, after-before, peak)
		b.ReportMetric(after-before, "usage-MiB")

		floor, took := timeChanges(b, ns, suffix, names, ids)
		fmt.Printf("a new consumer in status.usage: median %v, max %v (target 2s); the apiserver's delivery of it: median %v; ratio %.1f\n",
			median(took), slices.Max(took), median(floor), float64(median(took))/float64(max(median(floor), time.Millisecond)))
		b.ReportMetric(median(took).Seconds(), "consumer-s")
		m.stop(b)
		cleanKeys(b, ns)
		if err := user.DeleteAllOf(ctx, &storagev1.StorageClass{}); err != nil {
			b.Log(err)
		}
		var pvs corev1.PersistentVolumeList
		if err := user.List(ctx, &pvs); err == nil {
			_ = parallel(ctx, *writers, len(pvs.Items), func(i int) error {
				pv := &pvs.Items[i]
				_ = user.Patch(ctx, pv, client.RawPatch("application/merge-patch+json", []byte(`{"metadata":{"finalizers":null}}`)))
				return client.IgnoreNotFound(user.Delete(ctx, pv))
			})
		}
	}
}

func keyIDs(b *testing.B, ns string) map[string]string {
	var list v1alpha1.CustomerMasterKeyList
	if err := user.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		b.Fatal(err)
	}
	ids := map[string]string{}
	for _, c := range list.Items {
		ids[c.Name] = c.Status.KeyID
	}
	return ids
}

func volumeOn(name, keyID string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeSpec{
		Capacity:    corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")},
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "disk.csi.everest.io", VolumeHandle: name,
			VolumeAttributes: map[string]string{"everest.io/crypt-key-id": keyID, "everest.io/disk-volume-type": "SSD", "storage.kubernetes.io/csiProvisionerIdentity": "everest"}}}}}
}

func classOn(name, keyID string) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: "everest-csi-provisioner",
		Parameters: map[string]string{"everest.io/crypt-key-id": keyID, "everest.io/disk-volume-type": "SSD", "csi.storage.k8s.io/fstype": "ext4"}}
}

// waitCounted waits until the keys of ns count want consumers in all, and says when.
func waitCounted(b *testing.B, ns string, want int) time.Time {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		var list v1alpha1.CustomerMasterKeyList
		if err := user.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			b.Fatal(err)
		}
		n := 0
		for _, c := range list.Items {
			if c.Status.Usage != nil {
				n += int(c.Status.Usage.Consumers)
			}
		}
		if n == want {
			return time.Now()
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d consumers counted after 10 minutes, want %d", n, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// timeChanges makes -usage-changes StorageClasses one at a time, each on another key, and times
// how long each takes to show in that key's status.usage, and, as the floor, to reach a watch
// of StorageClasses.
func timeChanges(b *testing.B, ns, suffix string, names []string, ids map[string]string) (floor, took []time.Duration) {
	ctx := context.Background()
	for i := range *usageChanges {
		name := names[(i*7919)%len(names)]
		// Both watches start at the revision of now: they deliver only what comes after.
		var now storagev1.StorageClassList
		if err := user.List(ctx, &now, client.Limit(1)); err != nil {
			b.Fatal(err)
		}
		from := &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: now.ResourceVersion}}
		classes, err := user.Watch(ctx, &storagev1.StorageClassList{}, from)
		if err != nil {
			b.Fatal(err)
		}
		keys, err := user.Watch(ctx, &v1alpha1.CustomerMasterKeyList{}, client.InNamespace(ns), client.MatchingFields{"metadata.name": name}, from)
		if err != nil {
			b.Fatal(err)
		}
		c := &v1alpha1.CustomerMasterKey{}
		if err := user.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, c); err != nil {
			b.Fatal(err)
		}
		had := c.Status.Usage.Consumers
		sc := classOn(fmt.Sprintf("sc-%s-new-%02d", suffix, i), ids[name])
		start := time.Now()
		if err := user.Create(ctx, sc); err != nil {
			b.Fatal(err)
		}
		floor = append(floor, until(b, classes, func(e watch.Event) bool {
			o, ok := e.Object.(*storagev1.StorageClass)
			return ok && o.Name == sc.Name
		}).Sub(start))
		took = append(took, until(b, keys, func(e watch.Event) bool {
			o, ok := e.Object.(*v1alpha1.CustomerMasterKey)
			return ok && o.Name == name && o.Status.Usage != nil && o.Status.Usage.Consumers > had
		}).Sub(start))
		classes.Stop()
		keys.Stop()
	}
	return floor, took
}

// until reads w until an event passes, and says when it came.
func until(b *testing.B, w watch.Interface, pass func(watch.Event) bool) time.Time {
	timeout := time.After(time.Minute)
	for {
		select {
		case e, ok := <-w.ResultChan():
			if !ok {
				b.Fatal("the watch ended")
			}
			if pass(e) {
				return time.Now()
			}
		case <-timeout:
			b.Fatal("no event within a minute")
		}
	}
}
