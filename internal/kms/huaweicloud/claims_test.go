package huaweicloud

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/controllers"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

// TestConsoleKeyNotTakenByAlias: a tenant of an unlabeled namespace asking for the alias of a
// key made in the console gets AliasInUse, not the key, also with its create attempt backdated
// (the annotation is the tenant's to edit); deleting its resources with deletionPolicy Delete
// does nothing to the key.
func TestConsoleKeyNotTakenByAlias(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	ns := newNamespace(t, "hw-console")
	s.Clock.SetTime(time.Now().Add(-time.Hour)) // the production key was made an hour ago
	consoleID, err := s.CreateKeyInConsole("terraform/payments-prod")
	if err != nil {
		t.Fatal(err)
	}
	s.Clock.SetTime(time.Now())
	operator.Run(t, env, ns, p)

	asking := func(c *v1alpha1.CustomerMasterKey) {
		c.Spec.Alias, c.Spec.DeletionPolicy = "terraform/payments-prod", v1alpha1.DeletionPolicyDelete
	}
	plain := testenv.Key(ns, "grab", asking)
	backdated := func(name, at string) *v1alpha1.CustomerMasterKey {
		return testenv.Key(ns, name, asking, func(c *v1alpha1.CustomerMasterKey) {
			c.Annotations = map[string]string{controllers.CreateAttemptAnnotation: at}
		})
	}
	// Long before, and just before the console key was made (its window then covers the key).
	resources := []*v1alpha1.CustomerMasterKey{plain, backdated("grab-backdated", "2000-01-01T00:00:00Z"),
		backdated("grab-backdated-near", time.Now().Add(-70*time.Minute).UTC().Format(time.RFC3339))}
	for _, c := range resources {
		if err := env.Client.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
		waitReady(t, c, func(g Gomega, r *metav1.Condition) { g.Expect(r.Reason).NotTo(Equal(v1alpha1.ReasonCreating)) })
		owner, _ := p.Owner(ctx, consoleID)
		if c.Status.KeyID == consoleID || owner.UID == string(c.UID) {
			t.Errorf("%s took the console key %s by alias alone: status.keyID=%s owner=%+v", c.Name, consoleID, c.Status.KeyID, owner)
		}
	}
	// And deleting the resources must not schedule the console key for deletion.
	for _, c := range resources {
		_ = env.Client.Delete(ctx, c)
	}
	time.Sleep(3 * time.Second)
	if k, _ := p.Observe(ctx, consoleID); k.State == kms.StatePendingDeletion {
		t.Fatalf("console key %s scheduled for deletion by a tenant's resource", consoleID)
	}
}

// waitReady waits until the resource's Ready condition passes check.
func waitReady(t *testing.T, c *v1alpha1.CustomerMasterKey, check func(g Gomega, r *metav1.Condition)) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(context.Background(), client.ObjectKeyFromObject(c), c)).To(Succeed())
		r := meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionReady)
		g.Expect(r).NotTo(BeNil())
		check(g, r)
	}).WithTimeout(30 * time.Second).Should(Succeed())
}

// TestOverlappingClaimsOneWins holds one claim's tag write at the KMS while another claim of
// the key runs: tags have no compare-and-swap, so without the provider's per-key critical
// section both would read the old owner, write, and read themselves back.
func TestOverlappingClaimsOneWins(t *testing.T) {
	t.Parallel()
	_, s := newStandIn(t)
	ctx := context.Background()
	id, err := s.CreateKeyInConsole("k8s/ns/gone")
	if err != nil {
		t.Fatal(err)
	}
	gone := kms.Owner{Namespace: "ns", Name: "gone", UID: "00000000-0000-4000-8000-00000000000a"}
	b := kms.Owner{Namespace: "ns", Name: "b", UID: "00000000-0000-4000-8000-00000000000b"}
	c := kms.Owner{Namespace: "ns", Name: "c", UID: "00000000-0000-4000-8000-00000000000c"}

	target, _ := url.Parse(s.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	cWriteArrived, releaseC := make(chan struct{}), make(chan struct{})
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if strings.HasSuffix(r.URL.Path, "/tags/action") && bytes.Contains(body, []byte(c.UID)) {
			close(cWriteArrived)
			<-releaseC
		}
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	dir := credentialsDir(t, map[string]string{"access-key": s.AK, "secret-key": s.SK})
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: proxy.URL, CredentialsDir: dir, QPS: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.setTags(ctx, id, ownerTags(gone)); err != nil { // retained by a resource now deleted
		t.Fatal(err)
	}
	cErr, bErr := make(chan error, 1), make(chan error, 1)
	go func() { cErr <- p.Claim(ctx, id, c, gone) }()
	<-cWriteArrived // C has read the owner "gone" and is writing
	go func() { bErr <- p.Claim(ctx, id, b, gone) }()
	time.Sleep(200 * time.Millisecond) // B, unserialized, would read "gone" now
	close(releaseC)
	errC, errB := <-cErr, <-bErr
	now, _ := p.Owner(ctx, id)
	if errC != nil || !kms.IsClaimLost(errB) || now.UID != c.UID {
		t.Fatalf("overlapping claims: C %v, B %v; owner now %+v, want C's claim to win and B's to be lost", errC, errB, now)
	}
}

// TestCreateAfterCrashBeforeTag lets a create die between making the key and tagging it: the
// retry takes that untagged key, made within the resource's recorded attempt, instead of making
// a second or reporting a conflict; a key with the alias made before the attempt never is.
func TestCreateAfterCrashBeforeTag(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	req := kms.CreateRequest{Alias: "k8s/hw/crash", KeySpec: "SM4", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS,
		Token: "crash", Attempted: s.Clock.Now()}
	s.Fail("tags/action", 5, 500, "KMS.0500") // every try of the tag write, retries included
	if _, err := p.Create(ctx, req); err == nil {
		t.Fatal("Create succeeded though its tags were never written")
	}
	k, err := p.Create(ctx, req)
	if err != nil || k.State != kms.StateEnabled {
		t.Fatalf("Create again after the crash: %+v, %v; want the key made before", k, err)
	}
	if owner, err := p.Owner(ctx, k.ID); err != nil || owner.UID != "" && owner.UID != "crash" {
		t.Errorf("the key taken: owner %+v (%v)", owner, err)
	}
	if found, err := p.Lookup(ctx, "crash"); err != nil || found.ID != k.ID {
		t.Errorf("Lookup after the retry: %+v, %v", found, err)
	}

	// A console key with the alias, made before the resource's attempt, is not taken.
	console, err := s.CreateKeyInConsole("k8s/hw/console")
	if err != nil {
		t.Fatal(err)
	}
	s.Advance(time.Minute)
	req = kms.CreateRequest{Alias: "k8s/hw/console", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS,
		Token: "late", Attempted: s.Clock.Now()}
	if _, err := p.Create(ctx, req); kms.AsAliasInUse(err) == nil || kms.AsAliasInUse(err).KeyID != console {
		t.Errorf("Create with a console key's alias: %v, want AliasInUse naming %s", err, console)
	}
}

// TestFindAfterCrashBeforeTag: a create that died between making the key and tagging it leaves
// a key no tag search finds. Find, which the reconciler asks for a resource being deleted,
// takes it, tagged now with its token, owner and provenance; not a key with the alias made
// before the attempt, nor one with another alias.
func TestFindAfterCrashBeforeTag(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	owner := kms.Owner{Namespace: "ns", Name: "crash", UID: "00000000-0000-4000-8000-0000000000c1"}
	prov := kms.Provenance{Cluster: "cluster", Install: "install", DeletionPolicy: kms.PolicyDelete, PendingDays: 7}
	req := kms.CreateRequest{Alias: "k8s/ns/crash", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS,
		Token: owner.UID, Owner: owner, Provenance: prov, Attempted: s.Clock.Now()}
	if _, err := p.Find(ctx, req); !kms.IsNotFound(err) {
		t.Fatalf("Find before any create: %v, want NotFound", err)
	}
	s.Fail("tags/action", 5, 500, "KMS.0500")
	if _, err := p.Create(ctx, req); err == nil {
		t.Fatal("Create succeeded though its tags were never written")
	}
	if _, err := p.Lookup(ctx, req.Token); !kms.IsNotFound(err) {
		t.Fatalf("Lookup of the untagged key: %v, want NotFound", err)
	}
	k, err := p.Find(ctx, req)
	if err != nil {
		t.Fatalf("Find after the crash: %v", err)
	}
	if o, got, err := p.Provenance(ctx, k.ID); err != nil || o.UID != owner.UID || got != prov {
		t.Errorf("the key found: owner %+v, provenance %+v, %v; want %+v, %+v", o, got, err, owner, prov)
	}
	if again, err := p.Find(ctx, req); err != nil || again.ID != k.ID {
		t.Errorf("Find again: %+v, %v", again, err)
	}

	console, err := s.CreateKeyInConsole("k8s/ns/console")
	if err != nil {
		t.Fatal(err)
	}
	s.Advance(time.Minute)
	late := req
	late.Alias, late.Token, late.Attempted = "k8s/ns/console", "00000000-0000-4000-8000-0000000000c2", s.Clock.Now()
	if _, err := p.Find(ctx, late); !kms.IsNotFound(err) {
		t.Errorf("Find for an alias a console key (%s) held before the attempt: %v, want NotFound", console, err)
	}
	if o, _ := p.Owner(ctx, console); !o.IsZero() {
		t.Errorf("the console key was marked: %+v", o)
	}
}

// TestInterruptedClaim lets a claim die between deleting the previous owner's tags and writing
// its own (Huawei does not overwrite a tag, so a claim takes two calls): the key stays its
// namespace's, owned by no live resource, so only a resource of that namespace can take it,
// and the claim made again completes.
func TestInterruptedClaim(t *testing.T) {
	t.Parallel()
	p, _ := newStandIn(t)
	ctx := context.Background()
	key, err := p.Create(ctx, kms.CreateRequest{Alias: "k8s/ns/a", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT",
		Origin: kms.OriginKMS, Token: "token-a", Owner: kms.Owner{Namespace: "ns", Name: "a", UID: "00000000-0000-4000-8000-00000000000a"}})
	if err != nil {
		t.Fatal(err)
	}
	b := kms.Owner{Namespace: "ns", Name: "b", UID: "00000000-0000-4000-8000-00000000000b"}
	tags, err := p.allTags(ctx, key.ID)
	if err != nil {
		t.Fatal(err)
	}
	remove, _ := changes(tags, ownerTags(b))
	if err := p.retag(ctx, key.ID, remove, nil); err != nil { // the claim's first call, and no second
		t.Fatal(err)
	}
	half, err := p.Owner(ctx, key.ID)
	if err != nil {
		t.Fatal(err)
	}
	if half.IsZero() || !half.In("ns") || half.In("other") || half.UID == b.UID {
		t.Fatalf("after a claim died halfway the owner reads %+v, want one of namespace ns that no resource is", half)
	}
	if err := p.Claim(ctx, key.ID, b, kms.Owner{}); !kms.IsClaimLost(err) {
		t.Errorf("a claim of a halfway-claimed key as if it had no owner: %v, want it lost", err)
	}
	if err := p.Claim(ctx, key.ID, b, half); err != nil {
		t.Fatalf("claiming again: %v", err)
	}
	if now, _ := p.Owner(ctx, key.ID); now != b {
		t.Errorf("owner after the claim made again: %+v, want %+v", now, b)
	}
}

// TestClaimRewritesOnlyWhatChanges takes a key back for a resource created again (same
// namespace and name, new UID) from a KMS that refuses to create a tag key a key has: only the
// UID tag goes and comes back.
func TestClaimRewritesOnlyWhatChanges(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	old := kms.Owner{Namespace: "ns", Name: "app", UID: "00000000-0000-4000-8000-00000000000a"}
	key, err := p.Create(ctx, kms.CreateRequest{Alias: "k8s/ns/app", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT",
		Origin: kms.OriginKMS, Token: old.UID, Owner: old})
	if err != nil {
		t.Fatal(err)
	}
	again := kms.Owner{Namespace: "ns", Name: "app", UID: "00000000-0000-4000-8000-00000000000c"}
	s.ResetCalls()
	if err := p.Claim(ctx, key.ID, again, old); err != nil {
		t.Fatal(err)
	}
	// Read, delete the old UID, create the new one, read back.
	if calls := s.Calls(); calls["tags"] != 2 || calls["tags/action"] != 2 {
		t.Errorf("the claim made %v calls, want 2 reads and 2 writes of tags", calls)
	}
	if now, _ := p.Owner(ctx, key.ID); now != again {
		t.Errorf("owner %+v, want %+v", now, again)
	}
}

// TestHalfClaimedKeyIsNotTakenByAlias leaves an adopted console key (no creation token) with
// only its namespace tag, a claim having died halfway: a resource of another namespace asking
// for its alias, with a create attempt recorded before the key was made, is told the alias is
// in use; the key is not taken as one its own create made and never tagged.
func TestHalfClaimedKeyIsNotTakenByAlias(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	attempted := s.Clock.Now()
	s.Advance(time.Minute)
	id, err := s.CreateKeyInConsole("shared/payments")
	if err != nil {
		t.Fatal(err)
	}
	a := kms.Owner{Namespace: "ns-y", Name: "a", UID: "00000000-0000-4000-8000-00000000000a"}
	b := kms.Owner{Namespace: "ns-y", Name: "b", UID: "00000000-0000-4000-8000-00000000000b"}
	if err := p.Claim(ctx, id, a, kms.Owner{}); err != nil {
		t.Fatal(err)
	}
	tags, err := p.allTags(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	remove, _ := changes(tags, ownerTags(b))
	if err := p.retag(ctx, id, remove, nil); err != nil { // b's claim, dying after its first call
		t.Fatal(err)
	}
	other := kms.Owner{Namespace: "ns-x", Name: "x", UID: "00000000-0000-4000-8000-0000000000ff"}
	_, err = p.Create(ctx, kms.CreateRequest{Alias: "shared/payments", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT",
		Origin: kms.OriginKMS, Token: other.UID, Attempted: attempted, Owner: other})
	if kms.AsAliasInUse(err) == nil {
		t.Errorf("another namespace's create of the alias: %v, want AliasInUse", err)
	}
	if now, _ := p.Owner(ctx, id); !now.In("ns-y") {
		t.Errorf("owner %+v, want the key still ns-y's", now)
	}
	if err := p.Claim(ctx, id, other, kms.Owner{Namespace: "ns-y", UID: claimInterrupted}); !kms.IsClaimLost(err) {
		t.Errorf("a claim from another namespace: %v, want it lost", err)
	}
}

// TestRetriedTagCreateThatWasCarriedOut has the KMS carry out a tag create and answer 504 (a
// gateway timeout): the request sent again is refused, the tags being there (KMS.0406), and the
// claim succeeds rather than failing for good.
func TestRetriedTagCreateThatWasCarriedOut(t *testing.T) {
	t.Parallel()
	_, s := newStandIn(t)
	ctx := context.Background()
	target, _ := url.Parse(s.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	var once sync.Once
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		first := false
		if strings.HasSuffix(r.URL.Path, "/tags/action") && bytes.Contains(body, []byte(`"create"`)) {
			once.Do(func() { first = true })
		}
		if !first {
			rp.ServeHTTP(w, r)
			return
		}
		rp.ServeHTTP(httptest.NewRecorder(), r) // carried out, the answer lost
		w.WriteHeader(http.StatusGatewayTimeout)
		_, _ = w.Write([]byte(`{"error_code":"APIGW.0201","error_msg":"timeout"}`))
	}))
	defer proxy.Close()
	dir := credentialsDir(t, map[string]string{"access-key": s.AK, "secret-key": s.SK})
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: proxy.URL, CredentialsDir: dir, QPS: 1000})
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.CreateKeyInConsole("k8s/ns/x")
	if err != nil {
		t.Fatal(err)
	}
	a := kms.Owner{Namespace: "ns", Name: "a", UID: "00000000-0000-4000-8000-00000000000a"}
	if err := p.Claim(ctx, id, a, kms.Owner{}); err != nil {
		t.Errorf("a claim whose tag create was carried out before a 504: %v", err)
	}
	if now, _ := p.Owner(ctx, id); now != a {
		t.Errorf("owner %+v, want %+v", now, a)
	}
}
