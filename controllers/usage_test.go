package controllers

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// encryptedClass is a StorageClass whose parameters name the key, as Huawei EVS's do.
func encryptedClass(name, keyID string) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: "everest-csi-provisioner",
		Parameters: map[string]string{"csi.storage.k8s.io/fstype": "ext4", "everest.io/disk-volume-type": "SSD", "everest.io/crypt-key-id": keyID}}
}

// encryptedVolume is a PersistentVolume whose CSI attributes name the key.
func encryptedVolume(name, keyID string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeSpec{
		Capacity:    corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")},
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
			Driver: "disk.csi.everest.io", VolumeHandle: name, VolumeAttributes: map[string]string{"everest.io/crypt-key-id": keyID}}}}}
}

// declaring is a Deployment of namespace ns that declares it uses the named keys.
func declaring(ns, name, uses string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{v1alpha1.UsesKeyAnnotation: uses}},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}}}
}

// deleteAll deletes the objects for good: the apiserver puts kubernetes.io/pv-protection on a
// PersistentVolume, which no controller here takes off.
func deleteAll(t testing.TB, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := env.Client.Delete(context.Background(), o); err != nil {
			t.Fatalf("deleting %s: %v", o.GetName(), err)
		}
		if err := env.Client.Patch(context.Background(), o, rawMerge(t, map[string]any{"metadata": map[string]any{"finalizers": nil}})); client.IgnoreNotFound(err) != nil {
			t.Fatalf("letting %s go: %v", o.GetName(), err)
		}
	}
}

// usedBy waits until status.usage names exactly refs.
func (h *harness) usedBy(name string, refs ...string) *v1alpha1.CustomerMasterKey {
	h.t.Helper()
	return h.eventually(name, func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Usage).NotTo(BeNil(), "status.usage")
		g.Expect(c.Status.Usage.Consumers).To(BeEquivalentTo(len(refs)), "consumers")
		if len(refs) == 0 {
			g.Expect(c.Status.Usage.Refs).To(BeEmpty())
		} else {
			g.Expect(c.Status.Usage.Refs).To(Equal(refs))
		}
	})
}

// TestUsageCounted: each kind of consumer is counted (a StorageClass and a PersistentVolume
// naming the key ID, a Deployment of the namespace annotated with the resource's name, the
// resource's own kms.cmk.io/protects), a Deployment of another namespace naming a resource of
// the same name is not, and usage falls back to 0 when the consumers go.
func TestUsageCounted(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	other := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("orders"))
	id := h.waitPhase("orders", v1alpha1.PhaseEnabled).Status.KeyID
	if c := h.get("orders"); c.Status.Usage != nil {
		t.Errorf("a key nothing uses reports usage %+v", c.Status.Usage)
	}

	sc, pv := encryptedClass("evs-"+h.ns, id), encryptedVolume("pv-"+h.ns, id)
	app, elsewhere := declaring(h.ns, "api", "orders, archive"), declaring(other.ns, "api", "orders")
	createAll(t, sc, pv, app, elsewhere)
	h.patchMeta("orders", map[string]any{"annotations": map[string]any{v1alpha1.ProtectsAnnotation: v1alpha1.ProtectsAPIServerSecrets}})
	c := h.usedBy("orders", "APIServer/-/secrets", "Deployment/"+h.ns+"/api", "PersistentVolume/-/pv-"+h.ns, "StorageClass/-/evs-"+h.ns)
	if c.Status.Usage.LastUpdateTime == nil {
		t.Error("status.usage has no lastUpdateTime")
	}

	deleteAll(t, sc, pv, app)
	h.patchMeta("orders", map[string]any{"annotations": map[string]any{v1alpha1.ProtectsAnnotation: nil}})
	h.usedBy("orders")
}

// patchMeta applies a JSON merge patch to the resource's metadata.
func (h *harness) patchMeta(name string, meta map[string]any) {
	h.t.Helper()
	c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns}}
	if err := env.Client.Patch(context.Background(), c, rawMerge(h.t, map[string]any{"metadata": meta})); err != nil {
		h.t.Fatal(err)
	}
}

// TestKeyInUseHeld: consumers that appear after the spec changed (or on a cluster without the
// admission policy) hold the change at reconcile: disabling, scheduling the deletion, and the
// finalizer of a Delete resource wait, with no KMS call, Ready=False reason KeyInUse and a
// Warning event naming the consumers; each goes ahead once the consumer is gone, or the
// override is set.
func TestKeyInUseHeld(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.start(managerOptions{})
	h.create(h.cmk("db", deletePolicy))
	id := h.waitPhase("db", v1alpha1.PhaseEnabled).Status.KeyID
	sc := encryptedClass("evs-"+h.ns, id)
	createAll(t, sc)
	h.usedBy("db", "StorageClass/-/evs-"+h.ns)

	waitHeld := func(consumer string) {
		t.Helper()
		h.eventually("db", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
			g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
			ready := cond(c, v1alpha1.ConditionReady)
			g.Expect(ready.Reason).To(Equal(v1alpha1.ReasonKeyInUse))
			g.Expect(ready.Message).To(And(ContainSubstring(consumer), ContainSubstring(v1alpha1.AllowWhileInUseAnnotation)))
		})
	}
	h.patch("db", map[string]any{"enabled": false})
	waitHeld("StorageClass/-/evs-" + h.ns)
	if st := h.kmsState(id); st != kms.StateEnabled {
		t.Fatalf("a key in use was disabled: %s", st)
	}
	NewWithT(t).Eventually(func() []string { return h.events("db") }).WithTimeout(timeout).Should(ContainElement(v1alpha1.ReasonKeyInUse))

	deleteAll(t, sc) // the last consumer goes: the disable is carried out
	h.waitPhase("db", v1alpha1.PhaseDisabled)

	pv := encryptedVolume("pv-"+h.ns, id)
	createAll(t, pv)
	h.usedBy("db", "PersistentVolume/-/pv-"+h.ns)
	h.patch("db", map[string]any{"deletionScheduled": true})
	waitHeld("PersistentVolume/-/pv-" + h.ns)
	h.patchMeta("db", map[string]any{"annotations": map[string]any{v1alpha1.AllowWhileInUseAnnotation: "true"}})
	h.waitPhase("db", v1alpha1.PhasePendingDeletion)

	h.patch("db", map[string]any{"deletionScheduled": false})
	h.patchMeta("db", map[string]any{"annotations": map[string]any{v1alpha1.AllowWhileInUseAnnotation: nil}})
	h.waitPhase("db", v1alpha1.PhaseDisabled)
	h.delete("db") // deletionPolicy Delete, and a volume still on the key
	waitHeld("PersistentVolume/-/pv-" + h.ns)
	if st := h.kmsState(id); st != kms.StateDisabled {
		t.Fatalf("the finalizer scheduled a key in use: %s", st)
	}
	deleteAll(t, pv)
	h.waitGone("db")
	if st := h.kmsState(id); st != kms.StatePendingDeletion {
		t.Errorf("after its last consumer went, the deleted resource's key is %s, want PendingDeletion", st)
	}
}

// TestKeyInUseAtAdmission: with config/admission's policy, a key in use is neither disabled
// nor scheduled for deletion by a spec change, nor its Delete resource deleted; each refusal
// names the consumers and the override, which lets the change through. A change that does not
// stop the key (a description) passes, and so does deleting a Retain resource.
func TestKeyInUseAtAdmission(t *testing.T) {
	h := newHarness(t)
	h.start(managerOptions{})
	installManifests(t, filepath.Join("..", "config", "admission", "key_in_use_policy.yaml"))
	h.create(h.cmk("db", deletePolicy), h.cmk("kept"))
	id := h.waitPhase("db", v1alpha1.PhaseEnabled).Status.KeyID
	kept := h.waitPhase("kept", v1alpha1.PhaseEnabled).Status.KeyID
	sc := encryptedClass("evs-"+h.ns, id)
	createAll(t, sc, encryptedVolume("pv-"+h.ns, kept))
	h.usedBy("db", "StorageClass/-/evs-"+h.ns)
	h.usedBy("kept", "PersistentVolume/-/pv-"+h.ns)

	patch := func(name string, spec map[string]any, opts ...client.PatchOption) error {
		c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: h.ns}}
		return env.Client.Patch(context.Background(), c, rawMerge(t, map[string]any{"spec": spec}), opts...)
	}
	// The apiserver takes a new policy in after a moment: dry runs ask until it has.
	NewWithT(t).Eventually(func() error { return patch("db", map[string]any{"enabled": false}, client.DryRunAll) }).
		WithTimeout(timeout).Should(HaveOccurred())
	for _, tc := range []struct {
		spec map[string]any
		want string
	}{
		{map[string]any{"enabled": false}, "disabling it would make the data they protect unreadable"},
		{map[string]any{"enabled": false, "deletionScheduled": true}, "scheduling its deletion"},
		{map[string]any{"description": "still in use"}, ""},
	} {
		err := patch("db", tc.spec)
		checkRefusal(t, err, tc.want)
		if tc.want != "" && err != nil && !strings.Contains(err.Error(), "StorageClass/-/evs-"+h.ns) {
			t.Errorf("the refusal does not name the consumer: %v", err)
		}
	}
	err := env.Client.Delete(context.Background(), h.cmk("db"))
	checkRefusal(t, err, "has deletionPolicy: Delete and its key is in use by 1 consumer(s) (StorageClass/-/evs-"+h.ns+")")
	if st := h.kmsState(id); st != kms.StateEnabled {
		t.Fatalf("a key in use is %s after the refusals", st)
	}

	h.delete("kept") // deletionPolicy Retain: the key stays, whatever uses it
	h.waitGone("kept")
	h.patchMeta("db", map[string]any{"annotations": map[string]any{v1alpha1.AllowWhileInUseAnnotation: "true"}})
	if err := patch("db", map[string]any{"enabled": false}); err != nil {
		t.Fatalf("disabling with the override: %v", err)
	}
	h.waitPhase("db", v1alpha1.PhaseDisabled)

	// The policy goes before the tests that run after this one, which expect none: the
	// apiserver lets go of a deleted policy after a moment, so a dry run asks until it has.
	h.patchMeta("db", map[string]any{"annotations": map[string]any{v1alpha1.AllowWhileInUseAnnotation: nil}})
	removeManifests(t, filepath.Join("..", "config", "admission", "key_in_use_policy.yaml"), func() error {
		return patch("db", map[string]any{"deletionScheduled": true}, client.DryRunAll)
	})
	deleteAll(t, sc)
}
