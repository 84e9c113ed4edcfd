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
	if _, err := p.Observe(t.Context(), "00000000-0000-4000-8000-000000000000"); err == nil || s.Unsigned() != 1 {
		t.Errorf("a badly signed request: %v, %d refused", err, s.Unsigned())
	}
}

// TestCreateAfterCrashBeforeTag makes a key the way a Create that died before tagging would
// leave it, and checks the next Create claims it rather than making a second.
func TestCreateAfterCrashBeforeTag(t *testing.T) {
	p, _ := newStandIn(t)
	spec, origin := "AES_256", "kms"
	body := &model.CreateKeyRequestBody{KeyAlias: "k8s/team/app"}
	if err := enum(spec, &body.KeySpec); err != nil {
		t.Fatal(err)
	}
	if err := enum(origin, &body.Origin); err != nil {
		t.Fatal(err)
	}
	orphan, err := p.client.CreateKey(&model.CreateKeyRequest{Body: body})
	if err != nil {
		t.Fatal(err)
	}
	k, err := p.Create(t.Context(), kms.CreateRequest{Alias: "k8s/team/app", KeySpec: spec, KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "uid-1"})
	if err != nil || k.ID != *orphan.KeyInfo.KeyId {
		t.Fatalf("Create after a crash: %v, key %s, want the orphan %s", err, k.ID, *orphan.KeyInfo.KeyId)
	}
	again, err := p.Create(t.Context(), kms.CreateRequest{Alias: "k8s/team/app", KeySpec: spec, KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "uid-1"})
	if err != nil || again.ID != k.ID {
		t.Errorf("Create again: %v, %s", err, again.ID)
	}
	// Another resource asking for the same alias is refused, not handed someone else's key.
	if _, err := p.Create(t.Context(), kms.CreateRequest{Alias: "k8s/team/app", KeySpec: spec, KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "uid-2"}); !kms.IsTerminal(err) {
		t.Errorf("a second resource with the alias: %v, want a terminal refusal", err)
	}
}
