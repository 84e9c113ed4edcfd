package huaweicloud

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cmk-operator/cmk-operator/internal/kms/huaweicloud/standin"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
)

// newStandIn starts the stand-in KMS and a provider configured for it as an operator would
// be: credentials from a mounted-Secret directory, a private endpoint, a rate limit.
func newStandIn(t *testing.T) (*Provider, *standin.Server) {
	t.Helper()
	s := standin.Start(time.Now().UTC().Truncate(time.Second))
	t.Cleanup(s.Close)
	dir := t.TempDir()
	for name, value := range map[string]string{"access-key": s.AK, "secret-key": s.SK + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(value), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: s.URL, CredentialsDir: dir, QPS: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return p, s
}

// TestConformance runs the suite every provider passes against the stand-in.
func TestConformance(t *testing.T) {
	kmstest.Run(t, func(t *testing.T) kmstest.Fixture {
		p, s := newStandIn(t)
		t.Cleanup(func() {
			if n := s.Unsigned(); n != 0 {
				t.Errorf("%d requests reached the stand-in unsigned or badly signed", n)
			}
		})
		return kmstest.Fixture{
			Provider: p,
			Now:      s.Clock.Now,
			Advance:  func(_ *testing.T, d time.Duration) { s.Advance(d) },
		}
	})
}

// TestUnsignedRequestsAreRefused checks the stand-in does check signatures: a provider with
// the wrong secret key gets nowhere.
func TestUnsignedRequestsAreRefused(t *testing.T) {
	_, s := newStandIn(t)
	dir := t.TempDir()
	_ = os.WriteFile(filepath.Join(dir, "access-key"), []byte(s.AK), 0o600)
	_ = os.WriteFile(filepath.Join(dir, "secret-key"), []byte("not-the-secret"), 0o600)
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: s.URL, CredentialsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Observe(t.Context(), "any"); err == nil || s.Unsigned() != 1 {
		t.Errorf("a badly signed request: %v, %d refused", err, s.Unsigned())
	}
}
