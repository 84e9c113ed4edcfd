// Package uninstall deletes the CustomerMasterKey CRD under a running operator, as an
// uninstall does (a Helm chart removed, a GitOps app pruned), in a control plane of its own:
// the other suites keep their CRD.
package uninstall

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/controllers"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// TestUninstallIsNoMassDeletion: with 20 keys whose deletionPolicy is Delete (one of them
// paused), deleting the CRD deletes every resource, and the operator lets each go without any
// KMS call: every key is still Enabled afterwards, and the CRD is gone within a minute.
func TestUninstallIsNoMassDeletion(t *testing.T) {
	ctx := context.Background()
	const ns, n = "estate", 20
	if err := env.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	provider := operator.Start(t, env, ns, "kms")
	for i := range n {
		c := testenv.Key(ns, fmt.Sprintf("key-%02d", i), func(c *v1alpha1.CustomerMasterKey) { c.Spec.DeletionPolicy = v1alpha1.DeletionPolicyDelete })
		if err := env.Client.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	g := NewWithT(t)
	var ids []string
	g.Eventually(func(g Gomega) {
		var list v1alpha1.CustomerMasterKeyList
		g.Expect(env.Client.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		ids = ids[:0]
		for _, c := range list.Items {
			g.Expect(c.Status.Phase).To(Equal(v1alpha1.PhaseEnabled), c.Name)
			ids = append(ids, c.Status.KeyID)
		}
		g.Expect(ids).To(HaveLen(n))
	}).WithTimeout(time.Minute).Should(Succeed())
	paused := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Name: "key-00", Namespace: ns}}
	if err := env.Client.Patch(ctx, paused, client.RawPatch("application/merge-patch+json",
		[]byte(`{"metadata":{"annotations":{"`+v1alpha1.PausedAnnotation+`":"true"}}}`))); err != nil {
		t.Fatal(err)
	}

	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	crd.SetName(controllers.CRDName)
	start := time.Now()
	if err := env.Client.Delete(ctx, crd); err != nil {
		t.Fatal(err)
	}
	g.Eventually(func() bool {
		return apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKey{Name: controllers.CRDName}, crd))
	}).WithTimeout(time.Minute).Should(BeTrue(), "the CRD is still there a minute after its deletion")
	t.Logf("the CRD was gone %v after its deletion", time.Since(start).Round(time.Millisecond))

	for _, id := range ids {
		k, err := provider.Observe(ctx, id)
		if err != nil || k.State != kms.StateEnabled {
			t.Errorf("key %s after the uninstall: %s (%v), want Enabled", id, k.State, err)
		}
	}
}
