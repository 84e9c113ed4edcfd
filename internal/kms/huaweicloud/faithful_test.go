package huaweicloud

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

// newNamespace creates a namespace of its own for a test.
func newNamespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := prefix + "-" + string(uuid.NewUUID())[:8]
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns
}

// The tests here hold the provider to Huawei Cloud KMS as it answers (the stand-in follows
// docs/huaweicloud.md: the SDK's models, Huawei's error-code table, the Terraform providers),
// one numbered item of issue 10 each.

// 1. A key the KMS deleted answers HTTP 400 KMS.0207: the resource reaches Deleted, and
// deleting it lets it go.
func TestDeletedKeyIsSeenAsDeleted(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	ns := newNamespace(t, "hw-deleted")
	operator.Run(t, env, ns, p)
	c := testenv.Key(ns, "gone", func(c *v1alpha1.CustomerMasterKey) { c.Spec.DeletionPolicy = v1alpha1.DeletionPolicyDelete })
	if err := env.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	phase := func(g Gomega) v1alpha1.Phase {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(c), c)).To(Succeed())
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
		return c.Status.Phase
	}
	NewWithT(t).Eventually(phase).WithTimeout(30 * time.Second).Should(Equal(v1alpha1.PhaseEnabled))
	patch := client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"enabled":false,"deletionScheduled":true}}`))
	if err := env.Client.Patch(ctx, c, patch); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(phase).WithTimeout(30 * time.Second).Should(Equal(v1alpha1.PhasePendingDeletion))

	s.Advance(8 * 24 * time.Hour)
	// The operator would look at the deletion date; an annotation makes it look now.
	poke := client.RawPatch("application/merge-patch+json", []byte(`{"metadata":{"annotations":{"test/poke":"1"}}}`))
	if err := env.Client.Patch(ctx, c, poke); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(phase).WithTimeout(30 * time.Second).Should(Equal(v1alpha1.PhaseDeleted))
	if err := env.Client.Delete(ctx, c); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func() error { return env.Client.Get(ctx, client.ObjectKeyFromObject(c), c) }).
		WithTimeout(30*time.Second).ShouldNot(Succeed(), "the finalizer held a resource whose key is deleted")
}

// 2. Keys of every spec are found by alias: list-keys without key_spec lists only AES_256.
func TestAliasConflictFoundForEverySpec(t *testing.T) {
	t.Parallel()
	p, _ := newStandIn(t)
	ctx := context.Background()
	req := kms.CreateRequest{Alias: "k8s/hw/sm4", KeySpec: "SM4", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "sm4-first"}
	first, err := p.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	req.Token = "sm4-second"
	_, err = p.Create(ctx, req)
	if inUse := kms.AsAliasInUse(err); inUse == nil || inUse.KeyID != first.ID {
		t.Errorf("a second SM4 key with alias %s: %v, want the alias in use by %s", req.Alias, err, first.ID)
	}
}

// 6. A 404 is the API gateway's (a wrong endpoint or project), never "the key is deleted".
func TestGatewayNotFoundIsNotADeletedKey(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	k, err := p.Create(context.Background(), kms.CreateRequest{Alias: "k8s/hw/here", KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "here"})
	if err != nil {
		t.Fatal(err)
	}
	dir := credentialsDir(t, map[string]string{"access-key": s.AK, "secret-key": s.SK})
	wrong, err := New(Config{ProjectID: "ffffffffffffffffffffffffffffffff", Endpoint: s.URL, CredentialsDir: dir, QPS: 1000})
	if err != nil {
		t.Fatal(err)
	}
	_, err = wrong.Observe(context.Background(), k.ID)
	if err == nil || kms.IsNotFound(err) || kms.IsTerminal(err) || kms.AsUnavailable(err) == nil ||
		!strings.Contains(err.Error(), "--huaweicloud-project-id") {
		t.Errorf("describe through a wrong project: %v, want the KMS unavailable (check the project), not a deleted key", err)
	}
}

// 8. KMS.0105, "system exception", is an HTTP 400 to retry, not a refusal for good.
func TestSystemExceptionIsRetried(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	k, err := p.Create(context.Background(), kms.CreateRequest{Alias: "k8s/hw/flaky", KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "flaky"})
	if err != nil {
		t.Fatal(err)
	}
	s.Fail("describe-key", 1, 400, "KMS.0105")
	if _, err := p.Observe(context.Background(), k.ID); err == nil || kms.IsTerminal(err) || kms.IsNotFound(err) {
		t.Errorf("describe during a system exception: %v, want an error to retry", err)
	}
	if got, err := p.Observe(context.Background(), k.ID); err != nil || got.State != kms.StateEnabled {
		t.Errorf("describe after it: %+v, %v", got, err)
	}
}

// 8. A frozen key (key_state 7: the account in arrears) is reported as such and left alone,
// not retried in a loop; when it thaws the resource is Ready again.
func TestFrozenKeyIsReportedAndLeftAlone(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	ns := newNamespace(t, "hw-frozen")
	operator.Run(t, env, ns, p)
	c := testenv.Key(ns, "cold")
	if err := env.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	ready := func(g Gomega) string {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(c), c)).To(Succeed())
		g.Expect(c.Status.ObservedGeneration).To(Equal(c.Generation))
		r := meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionReady)
		g.Expect(r).NotTo(BeNil())
		return r.Reason
	}
	NewWithT(t).Eventually(ready).WithTimeout(30 * time.Second).Should(Equal(v1alpha1.ReasonAvailable))
	s.Freeze(c.Status.KeyID)
	poke := func(v string) {
		t.Helper()
		p := client.RawPatch("application/merge-patch+json", []byte(`{"metadata":{"annotations":{"test/poke":"`+v+`"}}}`))
		if err := env.Client.Patch(ctx, c, p); err != nil {
			t.Fatal(err)
		}
	}
	poke("frozen")
	NewWithT(t).Eventually(ready).WithTimeout(30 * time.Second).Should(Equal(v1alpha1.ReasonKeyFrozen))
	if c.Status.Phase != v1alpha1.PhaseEnabled {
		t.Errorf("phase %s while frozen, want the last known Enabled", c.Status.Phase)
	}
	rv := c.ResourceVersion
	time.Sleep(2 * time.Second)
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(c), c); err != nil || c.ResourceVersion != rv {
		t.Errorf("status kept changing while the key was frozen (%v)", err)
	}
	s.Thaw(c.Status.KeyID)
	poke("thawed")
	NewWithT(t).Eventually(ready).WithTimeout(30 * time.Second).Should(Equal(v1alpha1.ReasonAvailable))
}

// 7. Refused credentials are a KMS-wide condition: every resource shows what to fix, calls
// stop reaching the gateway (Huawei locks an access key after 5 failures in a row), and once
// the credentials are fixed the resources carry on by themselves.
func TestRefusedCredentialsBackOffForEveryKey(t *testing.T) {
	t.Parallel()
	_, s := newStandIn(t)
	ctx := context.Background()
	dir := credentialsDir(t, map[string]string{"access-key": s.AK, "secret-key": "a-stale-secret"})
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: s.URL, CredentialsDir: dir, QPS: 1000, AuthBackoff: 2 * time.Second,
		CredentialsCheck: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t, "hw-auth")
	operator.Run(t, env, ns, p)
	names := []string{"a", "b", "c", "d", "e", "f"}
	for _, name := range names {
		c := testenv.Key(ns, name)
		if err := env.Client.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	synced := func(name string) func(g Gomega) *metav1.Condition {
		return func(g Gomega) *metav1.Condition {
			c := &v1alpha1.CustomerMasterKey{}
			g.Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, c)).To(Succeed())
			s := meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionSynced)
			g.Expect(s).NotTo(BeNil())
			return s
		}
	}
	for _, name := range names {
		NewWithT(t).Eventually(func(g Gomega) {
			s := synced(name)(g)
			g.Expect(s.Reason).To(Equal(v1alpha1.ReasonKMSUnavailable))
			g.Expect(s.Message).To(ContainSubstring("fix the access key and secret key"))
		}).WithTimeout(30 * time.Second).Should(Succeed())
	}
	time.Sleep(time.Second)
	if n := s.Unsigned(); n > 2 {
		t.Errorf("%d refused requests reached the gateway for %d keys within the backoff, want at most 2", n, len(names))
	}

	// The person fixes the Secret, as the message says; kubelet updates the mounted file.
	if err := os.WriteFile(filepath.Join(dir, "secret-key"), []byte(s.SK), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		NewWithT(t).Eventually(func(g Gomega) string { return synced(name)(g).Reason }).
			WithTimeout(30 * time.Second).Should(Equal(v1alpha1.ReasonReconcileSuccess))
	}
}

// 8. A tag search that lags behind the tags: a second Create with the same token, before the
// search shows the first one's key, still returns that key (its own tag says so), never a
// refusal or a second key.
func TestCreateTrustsItsOwnTagOverALaggingSearch(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	s.SetTagSearchLag(time.Minute)
	ctx := context.Background()
	req := kms.CreateRequest{Alias: "k8s/hw/lag", KeySpec: "SM4", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "lagging"}
	first, err := p.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := p.Create(ctx, req)
	if err != nil || again.ID != first.ID {
		t.Errorf("Create again while the tag search lags: %s, %v; want %s", again.ID, err, first.ID)
	}
	req.Token = "another"
	if _, err := p.Create(ctx, req); kms.AsAliasInUse(err) == nil {
		t.Errorf("another token with the alias: %v, want AliasInUse", err)
	}
}

// A new key reports key_state 1 (pending activation) for a while: Create waits a little for it
// to become usable, and reports one that takes longer as Creating rather than failing.
func TestNewKeyPendingActivation(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	k, err := p.Create(ctx, kms.CreateRequest{Alias: "k8s/hw/new", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "new"})
	if err != nil || k.State != kms.StateEnabled {
		t.Errorf("Create of a key pending activation once: %s, %v; want Enabled", k.State, err)
	}
	s.SetActivation(100)
	k, err = p.Create(ctx, kms.CreateRequest{Alias: "k8s/hw/slow", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "slow"})
	if err != nil || k.State != kms.StateCreating {
		t.Errorf("Create of a key slow to activate: %s, %v; want Creating", k.State, err)
	}
}

// 3. Huawei removes expired material up to a day late: a key past its material's expiry is
// still Enabled, and is looked at again with a backoff that grows with the lateness, not as
// fast as the rate limit allows.
func TestLateMaterialRemovalIsNotPolledHot(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	ns := newNamespace(t, "hw-expiry")
	operator.Run(t, env, ns, p)
	c := testenv.Key(ns, "byok", testenv.External)
	if err := env.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(c), c)).To(Succeed())
		g.Expect(c.Status.ImportParameters).NotTo(BeNil())
	}).WithTimeout(30 * time.Second).Should(Succeed())
	der, err := base64.StdEncoding.DecodeString(c.Status.ImportParameters.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	material := make([]byte, 32)
	_, _ = rand.Read(material)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "material", Namespace: ns}, Data: map[string][]byte{
		v1alpha1.SecretKeyEncryptedKeyMaterial: kmstest.Wrap(t, kms.ImportParameters{PublicKey: der}, material),
		v1alpha1.SecretKeyImportToken:          []byte(c.Status.ImportParameters.ImportToken)}}
	if err := env.Client.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	expiry := time.Now().Add(3 * time.Second).UTC().Truncate(time.Second).Add(time.Second)
	patch := fmt.Sprintf(`{"spec":{"keyMaterial":{"secretRef":{"name":"material"},"expiresAt":%q}}}`, expiry.Format(time.RFC3339))
	if err := env.Client.Patch(ctx, c, client.RawPatch("application/merge-patch+json", []byte(patch))); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func(g Gomega) v1alpha1.Phase {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(c), c)).To(Succeed())
		return c.Status.Phase
	}).WithTimeout(30 * time.Second).Should(Equal(v1alpha1.PhaseEnabled))

	time.Sleep(time.Until(expiry) + time.Second)
	s.ResetCalls()
	time.Sleep(5 * time.Second)
	if n := s.Calls()["describe-key"]; n > 6 {
		t.Errorf("%d describes in 5 s of a key whose material is past its expiry, want a few", n)
	}
	if k, err := p.Observe(ctx, c.Status.KeyID); err != nil || k.State != kms.StateEnabled {
		t.Errorf("the stand-in removed the material at once: %+v, %v", k, err)
	}
}

// A request the KMS does not answer in time fails after the request timeout, not the SDK's
// two minutes.
func TestRequestTimeout(t *testing.T) {
	t.Parallel()
	_, s := newStandIn(t)
	dir := credentialsDir(t, map[string]string{"access-key": s.AK, "secret-key": s.SK})
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: s.URL, CredentialsDir: dir, QPS: 1000, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s.SetLatency(2 * time.Second)
	start := time.Now()
	if _, err := p.Observe(context.Background(), "00000000-0000-4000-8000-000000000001"); err == nil || time.Since(start) > time.Second {
		t.Errorf("describe on a KMS slower than the timeout: %v after %v", err, time.Since(start))
	}
}

// The SDK's calls take no context; the provider's do: a reconcile that is cut short (the
// manager stopping, a deadline) does not wait for a slow KMS.
func TestCallsHonourTheContext(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	s.SetLatency(3 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.Observe(ctx, "00000000-0000-4000-8000-000000000001")
	if took := time.Since(start); err == nil || took > time.Second {
		t.Errorf("describe with a 100 ms deadline on a KMS 3 s slow: %v after %v", err, took)
	}
	start = time.Now()
	if err := p.Enable(ctx, "00000000-0000-4000-8000-000000000001"); err == nil || time.Since(start) > time.Second {
		t.Errorf("enable with an expired context: %v after %v", err, time.Since(start))
	}
}
