package huaweicloud

import (
	"context"
	"testing"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/controllers"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

// TestForwardDatedAttemptTakesNoConsoleKey: a tenant creates a paused resource naming an alias,
// waits until someone makes a key with that alias in the console days later, dates the
// annotation kms.cmk.io/create-attempted-at just before it and unpauses. An attempt is never
// dated later than an hour after its resource (createAttempt), so the console key is not taken,
// and deleting the resource with deletionPolicy Delete does not schedule it.
func TestForwardDatedAttemptTakesNoConsoleKey(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	ns := newNamespace(t, "hw-fwd")
	operator.Run(t, env, ns, p)

	c := testenv.Key(ns, "grab", func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Alias, c.Spec.DeletionPolicy = "terraform/payments-prod", v1alpha1.DeletionPolicyDelete
		c.Annotations = map[string]string{v1alpha1.PausedAnnotation: "true"}
	})
	if err := env.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	// Two days later a team makes its production key in the console.
	later := time.Now().Add(48 * time.Hour)
	s.Clock.SetTime(later)
	consoleID, err := s.CreateKeyInConsole("terraform/payments-prod")
	if err != nil {
		t.Fatal(err)
	}
	// The tenant moves its "attempt" to a minute before that, and unpauses.
	patch := client.MergeFrom(c.DeepCopy())
	c.Annotations = map[string]string{controllers.CreateAttemptAnnotation: later.Add(-time.Minute).UTC().Format(time.RFC3339)}
	if err := env.Client.Patch(ctx, c, patch); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	_ = env.Client.Get(ctx, client.ObjectKeyFromObject(c), c)
	owner, _ := p.Owner(ctx, consoleID)
	if c.Status.KeyID == consoleID || owner.UID == string(c.UID) {
		t.Errorf("a tenant took the console key %s by forward-dating its create attempt: status.keyID=%s owner=%+v", consoleID, c.Status.KeyID, owner)
	}
	if err := env.Client.Delete(ctx, c); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func() bool {
		return client.IgnoreNotFound(env.Client.Get(ctx, client.ObjectKeyFromObject(c), c)) == nil && c.UID == ""
	}).WithTimeout(10 * time.Second)
	time.Sleep(3 * time.Second)
	if k, _ := p.Observe(ctx, consoleID); k.State == kms.StatePendingDeletion {
		t.Errorf("the console key %s is scheduled for deletion by the tenant's resource", consoleID)
	}
}

// TestSetPolicyAfterHalfRetag: a retag that deleted the policy tag and died before creating it
// again leaves the key without its install; the next SetPolicy writes back the caller's, so the
// sweep does not take the key for an earlier install's.
func TestSetPolicyAfterHalfRetag(t *testing.T) {
	t.Parallel()
	p, _ := newStandIn(t)
	ctx := context.Background()
	prov := kms.Provenance{Cluster: "c1", Install: "0123456789abcdef", DeletionPolicy: kms.PolicyRetain, PendingDays: 7}
	k, err := p.Create(ctx, kms.CreateRequest{Alias: "k8s/hw/half", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT",
		Origin: kms.OriginKMS, Token: "u1", Owner: kms.Owner{Namespace: "hw", Name: "half", UID: "u1"}, Provenance: prov})
	if err != nil {
		t.Fatal(err)
	}
	// What retag leaves when its delete batch went through and its create batch failed.
	item := orphanItem(prov)
	if err := p.retag(ctx, k.ID, []model.TagItem{item}, nil); err != nil {
		t.Fatal(err)
	}
	want := prov
	want.DeletionPolicy = kms.PolicyDelete
	if err := p.SetPolicy(ctx, k.ID, want); err != nil {
		t.Fatal(err)
	}
	_, got, err := p.Provenance(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Install != prov.Install {
		t.Errorf("after a half retag and SetPolicy(Delete) the key records %+v: install %q lost, so the sweep takes it for an earlier install's and never applies Delete", got, got.Install)
	}
}
