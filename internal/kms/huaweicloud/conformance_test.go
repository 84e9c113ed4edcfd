package huaweicloud

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"

	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/huaweicloud/standin"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmstest"
)

// newStandIn starts the stand-in KMS and a provider configured for it as an operator would
// be: credentials from a mounted-Secret directory, a private endpoint, a rate limit.
func newStandIn(t testing.TB) (*Provider, *standin.Server) {
	t.Helper()
	s := standin.Start(time.Now().UTC().Truncate(time.Second))
	t.Cleanup(s.Close)
	dir := credentialsDir(t, map[string]string{"access-key": s.AK, "secret-key": s.SK + "\n"})
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: s.URL, CredentialsDir: dir, QPS: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return p, s
}

// credentialsDir writes credential files, as a mounted Secret holds them.
func credentialsDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, value := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(value), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestConformance runs the suite every provider passes against the stand-in.
func TestConformance(t *testing.T) { conformance(t, 0) }

// TestConformanceThrottled runs it with a tenth of the requests throttled (429), as an account
// at its rate limit sees them: the provider retries them, so the lifecycle holds.
func TestConformanceThrottled(t *testing.T) { conformance(t, 0.1) }

func conformance(t *testing.T, throttled float64) {
	t.Parallel()
	kmstest.Run(t, func(t *testing.T) kmstest.Fixture {
		p, s := newStandIn(t)
		s.Throttle(throttled)
		t.Cleanup(func() {
			if n := s.Unsigned(); n != 0 {
				t.Errorf("%d requests reached the stand-in unsigned or badly signed", n)
			}
		})
		return kmstest.Fixture{
			Provider: p,
			Late:     24 * time.Hour,
			Now:      s.Clock.Now,
			Advance:  func(_ *testing.T, d time.Duration) { s.Advance(d) },
		}
	})
}

// TestUnsignedRequestsAreRefused checks the stand-in does check signatures: a provider with
// the wrong secret key gets nowhere.
func TestUnsignedRequestsAreRefused(t *testing.T) {
	t.Parallel()
	_, s := newStandIn(t)
	dir := t.TempDir()
	_ = os.WriteFile(filepath.Join(dir, "access-key"), []byte(s.AK), 0o600)
	_ = os.WriteFile(filepath.Join(dir, "secret-key"), []byte("not-the-secret"), 0o600)
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: s.URL, CredentialsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Observe(t.Context(), "00000000-0000-4000-8000-000000000000"); err == nil || s.Unsigned() != 1 {
		t.Errorf("a badly signed request: %v, %d refused", err, s.Unsigned())
	}
}

// TestUntaggedKeyIsNeverClaimedByAlias makes a key with an alias and no tag, as a console user
// (or a Create that died before tagging) leaves it, and checks a Create with that alias is
// refused with the key named for the caller to judge, never handed the key.
func TestUntaggedKeyIsNeverClaimedByAlias(t *testing.T) {
	t.Parallel()
	p, _ := newStandIn(t)
	spec, origin := "AES_256", "kms"
	body := &model.CreateKeyRequestBody{KeyAlias: "k8s/team/app"}
	if err := enum(spec, &body.KeySpec); err != nil {
		t.Fatal(err)
	}
	if err := enum(origin, &body.Origin); err != nil {
		t.Fatal(err)
	}
	orphan, err := p.kms().CreateKey(&model.CreateKeyRequest{Body: body})
	if err != nil {
		t.Fatal(err)
	}
	for _, token := range []string{"uid-1", "uid-1", "uid-2"} {
		_, err := p.Create(t.Context(), kms.CreateRequest{Alias: "k8s/team/app", KeySpec: spec, KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: token})
		if inUse := kms.AsAliasInUse(err); inUse == nil || inUse.KeyID != *orphan.KeyInfo.KeyId {
			t.Errorf("Create (token %s) with the untagged key's alias: %v, want an AliasInUseError naming %s", token, err, *orphan.KeyInfo.KeyId)
		}
	}
	if owner, err := p.Owner(t.Context(), *orphan.KeyInfo.KeyId); err != nil || !owner.IsZero() {
		t.Errorf("the untagged key's owner is now %+v (%v)", owner, err)
	}
}
