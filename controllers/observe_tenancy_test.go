package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
)

// TestObserveWithForgedStatusKeyID: a tenant with rights on the status of their own namespace
// writes into status.keyID the key of another namespace that their Observe resource was refused.
// The operator checks the rules once per process and key whatever status says, so the resource
// stays AdoptionRefused and nothing of the key is read into it, not even what uses it.
func TestObserveWithForgedStatusKeyID(t *testing.T) {
	t.Parallel()
	w := newWorld(t, managerOptions{syncPeriod: time.Second})
	// bob may also write the status of his own resources.
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "bob-status", Namespace: w.b.ns}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"customermasterkeys/status"}, Verbs: []string{"get", "patch", "update"}}}}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "bob-status", Namespace: w.b.ns},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "bob"}},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "bob-status"}}
	createAll(t, role, binding)

	w.a.create("orders", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Tags = map[string]v1alpha1.TagValue{"cost-center": "payroll-7731"}
		c.Spec.Rotation = &v1alpha1.Rotation{Enabled: true, IntervalDays: 90}
	})
	id := w.a.eventually("orders", func(g Gomega, c *v1alpha1.CustomerMasterKey) {
		g.Expect(c.Status.Phase).To(Equal(v1alpha1.PhaseEnabled))
		g.Expect(c.Status.Tags).To(HaveKey("cost-center"))
	}).Status.KeyID
	pv := encryptedVolume("pv-alice-payroll-"+w.a.ns, id)
	createAll(t, pv)
	t.Cleanup(func() { deleteAll(t, pv) })
	w.a.eventually("orders", func(g Gomega, c *v1alpha1.CustomerMasterKey) { g.Expect(c.Status.Usage).NotTo(BeNil()) })

	w.b.create("peek", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.ManagementPolicy, c.Spec.KeyID = v1alpha1.ManagementPolicyObserve, id
		c.Spec.Tags = map[string]v1alpha1.TagValue{"x": "y"} // tags are read only while spec.tags or status.tags hold any
	})
	w.b.waitReason("peek", v1alpha1.ReasonAdoptionRefused)

	peek := w.b.cmk("peek")
	if err := w.b.c.Status().Patch(context.Background(), peek, client.RawPatch("application/merge-patch+json",
		[]byte(`{"status":{"keyID":"`+id+`"}}`))); err != nil {
		t.Fatalf("bob's status write: %v", err)
	}
	time.Sleep(3 * time.Second)
	c := &v1alpha1.CustomerMasterKey{}
	if err := w.b.c.Get(context.Background(), client.ObjectKey{Namespace: w.b.ns, Name: "peek"}, c); err != nil {
		t.Fatal(err)
	}
	if c.Status.Phase != "" || len(c.Status.Tags) != 0 || c.Status.Rotation != nil || cond(c, v1alpha1.ConditionReady).Reason == v1alpha1.ReasonObserved ||
		c.Status.Usage != nil && c.Status.Usage.Consumers > 0 {
		t.Errorf("bob reads alice's key through a forged status.keyID: phase %q, tags %v, rotation %+v, usage %+v, Ready %s",
			c.Status.Phase, c.Status.Tags, c.Status.Rotation, c.Status.Usage, cond(c, v1alpha1.ConditionReady).Reason)
	}
	if s := w.b.seen("peek"); strings.Contains(s, "payroll-7731") {
		t.Errorf("alice's tag value is visible to bob: %s", s)
	}
}
