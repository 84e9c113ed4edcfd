package huaweicloud

import (
	"context"
	"testing"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/controllers"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

// TestLegacyRetainedKey: a key the previous version made carries only the cmk-operator-uid tag
// (its creating resource's UID), not the namespace. Retained by a resource deleted before the
// upgrade, it is a key whose owner the KMS does not know: adopted, like a key made in the
// console, only where an administrator allows it, and then kept with its owner recorded.
func TestLegacyRetainedKey(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "hw-legacy-" + string(uuid.NewUUID())[:8]}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	id, err := s.CreateKeyInConsole("k8s/" + ns.Name + "/orders")
	if err != nil {
		t.Fatal(err)
	}
	old := "33333333-4444-4555-8666-777777777777" // the previous version's create tagged only this
	if _, err := p.kms().CreateKmsTag(&model.CreateKmsTagRequest{KeyId: id,
		Body: &model.CreateKmsTagRequestBody{Tag: &model.TagItem{Key: uidTag, Value: &old}}}); err != nil {
		t.Fatal(err)
	}
	operator.Run(t, env, ns.Name, p)

	c := testenv.Key(ns.Name, "orders")
	if err := env.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	ready := func(g Gomega) *metav1.Condition {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(c), c)).To(Succeed())
		r := meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionReady)
		g.Expect(r).NotTo(BeNil())
		return r
	}
	// Unlabeled: the alias is taken, by a key this namespace cannot adopt; its ID is not shown.
	NewWithT(t).Eventually(func(g Gomega) {
		r := ready(g)
		g.Expect(r.Reason).To(Equal(v1alpha1.ReasonAliasInUse))
		g.Expect(r.Message).To(ContainSubstring("cannot adopt"))
		g.Expect(r.Message).NotTo(ContainSubstring(id))
	}).WithTimeout(30 * time.Second).Should(Succeed())

	// Labeled: spec.keyID adopts it, and the owner is recorded in its tags.
	ns.Labels = map[string]string{controllers.AllowAdoptionLabel: "true"}
	if err := env.Client.Update(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Patch(ctx, c, client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"keyID":"`+id+`"}}`))); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func(g Gomega) {
		r := ready(g)
		g.Expect(r.Reason).To(Equal(v1alpha1.ReasonAvailable), r.Message)
		g.Expect(c.Status.KeyID).To(Equal(id))
	}).WithTimeout(30 * time.Second).Should(Succeed())
	owner, err := p.Owner(ctx, id)
	if err != nil || owner.UID != string(c.UID) || !owner.Is(ns.Name, "orders") {
		t.Errorf("owner after adoption: %+v, %v", owner, err)
	}
}
