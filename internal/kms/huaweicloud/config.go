package huaweicloud

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/provider"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/config"
	kmsv2 "github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/region"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Name selects this provider with --kms-provider.
const Name = "huaweicloud"

// Config is how the provider reaches the KMS. Credentials never come from flags (see
// Credentials).
type Config struct {
	Region    string
	ProjectID string
	// Endpoint overrides the regional endpoint, for private endpoints.
	Endpoint string
	// Credentials says where the credentials come from: "files" (access-key, secret-key and,
	// for temporary credentials, security-token in CredentialsDir, a mounted Secret), "env"
	// (the SDK's variables: HUAWEICLOUD_SDK_AK, _SK, _SECURITY_TOKEN, or _IDP_ID with
	// _ID_TOKEN_FILE), "metadata" (the temporary credentials of the node's IAM agency, from the
	// ECS metadata service) or "pod-identity" (CCE pod identity). Empty: "files" when
	// CredentialsDir is set, else "env".
	Credentials    string
	CredentialsDir string
	// QPS bounds the calls per second, to stay inside the account's KMS quota.
	QPS float64
	// EnterpriseProject is the enterprise project new keys are created in ("0", the default
	// project, when empty): CreateKey's enterprise_project_id.
	EnterpriseProject string
	// Timeout bounds each attempt of a request (default RequestTimeout).
	Timeout time.Duration
	// CredentialsCheck is how often credential files are read again for a change (default
	// DefaultCredentialsCheck).
	CredentialsCheck time.Duration
	// AuthBackoff is the first wait of every call after the credentials are refused (default
	// DefaultAuthBackoff; see breaker).
	AuthBackoff time.Duration
}

// RequestTimeout bounds one KMS request. The SDK's own default is 120 s, long enough for one
// stuck call to hold a reconcile worker for two minutes; docs/huaweicloud.md gives 5-8 s for
// the gateway's 502/504.
const RequestTimeout = 8 * time.Second

var flags Config

func init() {
	kms.Register(kms.Registration{
		Name: Name,
		AddFlags: func(fs *flag.FlagSet) {
			fs.StringVar(&flags.Region, "huaweicloud-region", os.Getenv("HUAWEICLOUD_SDK_REGION"), "Huawei Cloud region of the KMS, e.g. cn-north-4.")
			fs.StringVar(&flags.ProjectID, "huaweicloud-project-id", os.Getenv("HUAWEICLOUD_SDK_PROJECT_ID"), "Huawei Cloud project ID in that region.")
			fs.StringVar(&flags.Endpoint, "huaweicloud-endpoint", "", "KMS endpoint URL, to reach KMS through a private endpoint; default: the region's.")
			fs.StringVar(&flags.CredentialsDir, "huaweicloud-credentials-dir", "", "Directory with files access-key and secret-key, and security-token for temporary credentials (a mounted Secret).")
			fs.StringVar(&flags.Credentials, "huaweicloud-credentials", "",
				"Where credentials come from: files (--huaweicloud-credentials-dir), env (HUAWEICLOUD_SDK_AK, _SK, _SECURITY_TOKEN), "+
					"metadata (the node's IAM agency) or pod-identity (CCE); default: files with a credentials dir, else env.")
			fs.Float64Var(&flags.QPS, "kms-qps", 10, "Most KMS calls per second, to stay inside the KMS quota.")
			fs.StringVar(&flags.EnterpriseProject, "huaweicloud-enterprise-project", os.Getenv("HUAWEICLOUD_SDK_ENTERPRISE_PROJECT_ID"),
				"Enterprise project ID new keys are created in; default: 0, the default project.")
		},
		New: func(_ context.Context, _ kms.Env) (kms.Provider, error) { return New(flags) },
	})
}

// New builds the provider from configuration.
func New(cfg Config) (*Provider, error) {
	if cfg.ProjectID == "" {
		return nil, fmt.Errorf("huaweicloud: set --huaweicloud-project-id (or HUAWEICLOUD_SDK_PROJECT_ID)")
	}
	qps := cfg.QPS
	if qps <= 0 {
		qps = 10
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = RequestTimeout
	}
	backoff := cfg.AuthBackoff
	if backoff <= 0 {
		backoff = DefaultAuthBackoff
	}
	limited := &rateLimited{next: http.DefaultTransport, limiter: flowcontrol.NewTokenBucketRateLimiter(float32(qps), max(1, int(qps)))}
	const attempts = 5
	retried := &retrying{next: limited, attempts: attempts, backoff: 200 * time.Millisecond, perAttempt: timeout}
	// The SDK's timeout bounds a call with all its attempts; each attempt has its own.
	total := attempts*timeout + 10*time.Second
	httpConfig := config.DefaultHttpConfig().WithTimeout(total).WithHttpRoundTripper(&breaker{next: retried, initial: backoff, now: time.Now})
	build := func() (*kmsv2.KmsClient, error) {
		cred, err := credentials(cfg)
		if err != nil {
			return nil, fmt.Errorf("huaweicloud credentials: %w", err)
		}
		builder := kmsv2.KmsClientBuilder().WithCredential(cred).WithHttpConfig(httpConfig)
		switch {
		case cfg.Endpoint != "":
			builder = builder.WithEndpoints([]string{cfg.Endpoint})
		case cfg.Region != "":
			r, err := region.SafeValueOf(cfg.Region)
			if err != nil {
				return nil, fmt.Errorf("huaweicloud: region %q: %w", cfg.Region, err)
			}
			builder = builder.WithRegion(r)
		default:
			return nil, fmt.Errorf("huaweicloud: set --huaweicloud-region (or --huaweicloud-endpoint)")
		}
		client, err := builder.SafeBuild()
		if err != nil {
			return nil, fmt.Errorf("huaweicloud client: %w", err)
		}
		return kmsv2.NewKmsClient(client), nil
	}
	client, err := build()
	if err != nil {
		return nil, err
	}
	p := NewWithClient(client)
	p.enterpriseProject = cfg.EnterpriseProject
	if source := credentialSource(cfg); source == "files" {
		// Mounted files change in place when the Secret is fixed or its token renewed.
		every := cfg.CredentialsCheck
		if every <= 0 {
			every = DefaultCredentialsCheck
		}
		p.clients.build, p.clients.dir, p.clients.every = build, cfg.CredentialsDir, every
		p.clients.stamp, p.clients.checked = stampOf(cfg.CredentialsDir), time.Now()
	}
	return p, nil
}

// credentialSource is the credentials source cfg names, with its default.
func credentialSource(cfg Config) string {
	switch {
	case cfg.Credentials != "":
		return cfg.Credentials
	case cfg.CredentialsDir != "":
		return "files"
	}
	return "env"
}

// credentials builds the SDK credentials from the source cfg names. The SDK's own providers
// serve env, metadata and pod-identity (core/auth/provider); temporary credentials are renewed
// by the SDK before they expire.
func credentials(cfg Config) (*auth.BasicCredentials, error) {
	source := credentialSource(cfg)
	var cred auth.ICredential
	var err error
	switch source {
	case "files":
		cred, err = fileCredentials(cfg.CredentialsDir)
	case "env":
		cred, err = provider.BasicCredentialEnvProvider().GetCredentials()
		if err != nil {
			err = fmt.Errorf("set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK (and HUAWEICLOUD_SDK_SECURITY_TOKEN for temporary ones), or --huaweicloud-credentials-dir: %w", err)
		}
	case "metadata":
		cred, err = (&provider.MetadataBasicCredentialProvider{ProjectId: cfg.ProjectID}).GetCredentials()
	case "pod-identity":
		cred, err = provider.BasicCredentialPodIdentityProvider().GetCredentials()
	default:
		return nil, fmt.Errorf("--huaweicloud-credentials %q: want files, env, metadata or pod-identity", source)
	}
	if err != nil {
		return nil, err
	}
	basicCred, ok := cred.(*auth.BasicCredentials)
	if !ok {
		return nil, fmt.Errorf("credentials from %s are not project credentials", source)
	}
	basicCred.ProjectId = cfg.ProjectID
	return basicCred, nil
}

// fileCredentials reads the access key, the secret key and, for temporary credentials, the
// security token from files in dir.
func fileCredentials(dir string) (*auth.BasicCredentials, error) {
	if dir == "" {
		return nil, fmt.Errorf("--huaweicloud-credentials=files needs --huaweicloud-credentials-dir")
	}
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		return strings.TrimSpace(string(b)), err
	}
	ak, err := read("access-key")
	if err != nil {
		return nil, err
	}
	sk, err := read("secret-key")
	if err != nil {
		return nil, err
	}
	builder := auth.NewBasicCredentialsBuilder().WithAk(ak).WithSk(sk)
	switch token, err := read("security-token"); {
	case err == nil && token != "":
		builder = builder.WithSecurityToken(token)
	case err != nil && !os.IsNotExist(err):
		return nil, err
	}
	return builder.SafeBuild()
}

// rateLimited holds each request until the limiter allows it.
type rateLimited struct {
	next    http.RoundTripper
	limiter flowcontrol.RateLimiter
}

func (r *rateLimited) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := r.limiter.Wait(req.Context()); err != nil {
		return nil, err
	}
	return r.next.RoundTrip(req)
}
