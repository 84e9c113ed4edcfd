package huaweicloud

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/model"
	appsv1 "k8s.io/api/apps/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// TestOverlayCanReadItsCredentials renders config/huaweicloud as kubectl apply -k would and
// checks the pod, which runs as the image's non-root user, can read the mounted credentials:
// they belong to its group (fsGroup) and are group-readable.
func TestOverlayCanReadItsCredentials(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(filepath.Join(env.Assets, "kubectl"), "kustomize", filepath.Join("..", "..", "..", "config", "huaweicloud")).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize config/huaweicloud: %v", err)
	}
	var d *appsv1.Deployment
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		var obj appsv1.Deployment
		if err := dec.Decode(&obj); err != nil {
			break
		}
		if obj.Kind == "Deployment" {
			d = &obj
		}
	}
	if d == nil {
		t.Fatal("no Deployment in config/huaweicloud")
	}
	pod := d.Spec.Template.Spec
	sc := pod.SecurityContext
	if sc == nil || sc.RunAsUser == nil || sc.FSGroup == nil || *sc.FSGroup != 65532 || *sc.RunAsUser != 65532 {
		t.Fatalf("pod securityContext %+v: want runAsUser and fsGroup 65532, the image's user", sc)
	}
	var mode int32 = -1
	for _, v := range pod.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "huaweicloud-credentials" && v.Secret.DefaultMode != nil {
			mode = *v.Secret.DefaultMode
		}
	}
	if mode < 0 || mode&0o040 == 0 || mode&0o004 != 0 {
		t.Errorf("credentials defaultMode %o: want readable by the group (fsGroup), not by others", mode)
	}
	args := strings.Join(pod.Containers[0].Args, " ")
	for _, want := range []string{"--kms-provider=huaweicloud", "--huaweicloud-credentials-dir=/etc/huaweicloud", "--huaweicloud-enterprise-project="} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %s", args, want)
		}
	}
}

// TestEnterpriseProject checks keys are created in the configured enterprise project.
func TestEnterpriseProject(t *testing.T) {
	t.Parallel()
	_, s := newStandIn(t)
	dir := credentialsDir(t, map[string]string{"access-key": s.AK, "secret-key": s.SK})
	p, err := New(Config{ProjectID: s.ProjectID, Endpoint: s.URL, CredentialsDir: dir, QPS: 1000, EnterpriseProject: "ep-payments"})
	if err != nil {
		t.Fatal(err)
	}
	k, err := p.Create(context.Background(), kms.CreateRequest{Alias: "k8s/hw/ep", KeySpec: "AES_256",
		KeyUsage: "ENCRYPT_DECRYPT", Origin: kms.OriginKMS, Token: "ep"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := p.kms().ListKeyDetail(&model.ListKeyDetailRequest{Body: &model.OperateKeyRequestBody{KeyId: k.ID}})
	if err != nil || resp.KeyInfo == nil || deref(resp.KeyInfo.SysEnterpriseProjectId) != "ep-payments" {
		t.Errorf("the key's enterprise project: %v, %v; want ep-payments", resp, err)
	}
}

// TestTemporaryCredentials uses credentials with a security token, from the SDK's environment
// variables and from a mounted Secret's files: both sign requests the KMS takes, carrying the
// token.
func TestTemporaryCredentials(t *testing.T) {
	// Not parallel (t.Setenv): the environment is the process's.
	_, s := newStandIn(t)
	dir := credentialsDir(t, map[string]string{"access-key": s.AK, "secret-key": s.SK, "security-token": "file-token"})
	t.Setenv("HUAWEICLOUD_SDK_AK", s.AK)
	t.Setenv("HUAWEICLOUD_SDK_SK", s.SK)
	t.Setenv("HUAWEICLOUD_SDK_SECURITY_TOKEN", "env-token")
	for source, want := range map[string]string{"env": "env-token", "files": "file-token"} {
		cfg := Config{ProjectID: s.ProjectID, Endpoint: s.URL, QPS: 1000, Credentials: source}
		if source == "files" {
			cfg.CredentialsDir = dir
		}
		p, err := New(cfg)
		if err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		if _, err := p.Lookup(context.Background(), "nothing-"+source); !kms.IsNotFound(err) {
			t.Errorf("%s: a call with temporary credentials: %v", source, err)
		}
		if got := s.SecurityToken(); got != want || s.Unsigned() != 0 {
			t.Errorf("%s: security token %q (want %q), %d refused", source, got, want, s.Unsigned())
		}
	}
	if _, err := New(Config{ProjectID: s.ProjectID, Endpoint: s.URL, Credentials: "vault"}); err == nil {
		t.Error("an unknown credentials source was accepted")
	}
}
