package huaweicloud

// The tests here are a review's findings on the Huawei provider, each now a guarantee.

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// A 403 from the KMS for one action (an IAM policy denying it) is that call's refusal, not the
// account's: other keys are served.
func TestForbiddenOperationDoesNotStopOtherKeys(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	mk := func(alias string) string {
		k, err := p.Create(ctx, kms.CreateRequest{Alias: alias, KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT",
			Origin: kms.OriginKMS, Token: alias})
		if err != nil {
			t.Fatal(err)
		}
		return k.ID
	}
	a, b := mk("k8s/hw/denied"), mk("k8s/hw/bystander")
	s.Fail("schedule-key-deletion", 1, http.StatusForbidden, "KMS.0303") // an IAM Deny on this action only
	err := p.ScheduleDeletion(ctx, a, 7)
	if kms.AsUnavailable(err) != nil {
		t.Errorf("a 403 on one operation: %v; want it refused for this key, not the KMS unavailable", err)
	}
	if _, err := p.Observe(ctx, b); err != nil {
		t.Errorf("describe of another key right after: %v; want it served (the credentials work)", err)
	}
}

// Secret", but the files are read once, in New: a fixed Secret (kubelet updates the mounted
// files) is never picked up, and every resource stays KMSUnavailable until the pod restarts.
// (TestRefusedCredentialsBackOffForEveryKey passes only because it "fixes" IAM to match the bad
// Secret; the same holds for an expired security-token file.)
// Fixing the mounted credentials Secret, as the refusal says, takes effect without a restart.
func TestFixedSecretIsPickedUp(t *testing.T) {
	t.Parallel()
	_, s := newStandIn(t)
	ctx := context.Background()
	dir := t.TempDir()
	write := func(sk string) {
		for name, value := range map[string]string{"access-key": s.AK, "secret-key": sk} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(value), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("wrong-secret")
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: s.URL, CredentialsDir: dir, QPS: 1000, AuthBackoff: 200 * time.Millisecond, CredentialsCheck: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Lookup(ctx, "nothing"); kms.AsUnavailable(err) == nil {
		t.Fatalf("with a wrong secret: %v, want the KMS unavailable", err)
	}
	write(s.SK) // the person fixes the Secret, as the message says
	NewWithT(t).Eventually(func() error {
		_, err := p.Lookup(ctx, "nothing")
		if kms.IsNotFound(err) {
			return nil
		}
		return err
	}).WithTimeout(10*time.Second).WithPolling(300*time.Millisecond).Should(Succeed(),
		"the fixed credentials Secret was never read: the KMS stays unavailable until a restart")
}

// heldRefusal answers every request with 401, once released.
type heldRefusal struct{ release chan struct{} }

func (h *heldRefusal) RoundTrip(req *http.Request) (*http.Response, error) {
	<-h.release
	return &http.Response{StatusCode: http.StatusUnauthorized, Body: http.NoBody, Request: req}, nil
}

// One rotation seen by many calls in flight is one refusal: the backoff does not double for
// each.
func TestConcurrentRefusalsDoNotEscalateBackoff(t *testing.T) {
	t.Parallel()
	h := &heldRefusal{release: make(chan struct{})}
	b := &breaker{next: h, initial: 10 * time.Second, now: time.Now, verified: true} // working until now
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, "http://kms.invalid/v1.0/p/kms/describe-key", nil)
			_, _ = b.RoundTrip(req)
		}()
	}
	time.Sleep(100 * time.Millisecond) // all six are sent
	close(h.release)
	wg.Wait()
	if b.backoff != b.initial {
		t.Errorf("backoff after one rotation seen by 6 calls in flight: %v, want %v", b.backoff, b.initial)
	}
}

// Each attempt has its own timeout: slow 504s still leave time for the retry.
func TestGatewayTimeoutIsRetried(t *testing.T) {
	t.Parallel()
	p, s := newStandIn(t)
	ctx := context.Background()
	k, err := p.Create(ctx, kms.CreateRequest{Alias: "k8s/hw/slow504", KeySpec: "AES_256", KeyUsage: "ENCRYPT_DECRYPT",
		Origin: kms.OriginKMS, Token: "slow504"})
	if err != nil {
		t.Fatal(err)
	}
	s.SetLatency(3 * time.Second)
	s.Fail("describe-key", 2, http.StatusGatewayTimeout, "APIGW.0203")
	if got, err := p.Observe(ctx, k.ID); err != nil || got.ID != k.ID {
		t.Errorf("describe after two slow 504s: %v; want the third attempt served", err)
	}
}
