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
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/api/v1alpha1"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/testenv/operator"
)

// TestReview9bConsoleKeyNotTakenByAlias: a key made in the console (no tags at all) is a key
// whose owner the KMS does not record; README: adopted only in a labeled namespace, and by
// spec.keyID. A tenant of an UNLABELED namespace that merely asks for the same alias must get
// AliasInUse, not the key.
// TestConsoleKeyNotTakenByAlias: a tenant asking for the alias of a key made in the console
// gets AliasInUse, not the key; deleting its resource with deletionPolicy Delete does nothing
// to the key.
func TestConsoleKeyNotTakenByAlias(t *testing.T) {
	p, s := newStandIn(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: newNamespace(t, "hw-console")}}
	consoleID, err := s.CreateKeyInConsole("terraform/payments-prod")
	if err != nil {
		t.Fatal(err)
	}
	operator.Run(t, env, ns.Name, p)

	c := &v1alpha1.CustomerMasterKey{ObjectMeta: metav1.ObjectMeta{Name: "grab", Namespace: ns.Name},
		Spec: v1alpha1.CustomerMasterKeySpec{Alias: "terraform/payments-prod", KeySpec: v1alpha1.KeySpecAES256,
			KeyUsage: v1alpha1.KeyUsageEncryptDecrypt, Origin: v1alpha1.OriginKMS, Enabled: true, PendingDays: 7,
			DeletionPolicy: v1alpha1.DeletionPolicyDelete}}
	if err := env.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	NewWithT(t).Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(c), c)).To(Succeed())
		r := meta.FindStatusCondition(c.Status.Conditions, v1alpha1.ConditionReady)
		g.Expect(r).NotTo(BeNil())
		g.Expect(r.Reason).NotTo(Equal(v1alpha1.ReasonCreating))
	}).WithTimeout(30 * time.Second).Should(Succeed())
	owner, _ := p.Owner(ctx, consoleID)
	if c.Status.KeyID == consoleID || owner.UID == string(c.UID) {
		t.Errorf("unlabeled namespace took the console key %s by alias alone: status.keyID=%s owner=%+v", consoleID, c.Status.KeyID, owner)
	}
	// And deleting the resource must not schedule the console key for deletion.
	_ = env.Client.Delete(ctx, c)
	time.Sleep(3 * time.Second)
	if k, _ := p.Observe(ctx, consoleID); k.State == kms.StatePendingDeletion {
		t.Fatalf("console key %s scheduled for deletion by a tenant's resource", consoleID)
	}
}

// TestReview9bOverlappingClaimsBothWin: one leader runs several workers, so two resources of
// one namespace whose spec.keyID names the same retained key (its owner gone) claim it at once.
// Claim's read-back does not make the claim exclusive: C reads the old owner, B claims and reads
// itself back, C then writes and reads itself back. Both claims succeed, so two resources drive
// one key (README: "two resources never drive one key").
// TestOverlappingClaimsOneWins holds one claim's tag write at the KMS while another claim of
// the key runs: tags have no compare-and-swap, so without the provider's per-key critical
// section both would read the old owner, write, and read themselves back.
func TestOverlappingClaimsOneWins(t *testing.T) {
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
