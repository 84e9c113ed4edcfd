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

	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/auth/basic"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/core/config"
	kmsv2 "github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2"
	"github.com/huaweicloud/huaweicloud-sdk-go-v3/services/kms/v2/region"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/cmk-operator/cmk-operator/internal/kms"
)

// Name selects this provider with --kms-provider.
const Name = "huaweicloud"

// Config is how the provider reaches the KMS. Credentials never come from flags: from the
// SDK's environment variables (HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK), or from files
// access-key and secret-key in CredentialsDir, a Secret mounted as a volume.
type Config struct {
	Region    string
	ProjectID string
	// Endpoint overrides the regional endpoint, for private endpoints.
	Endpoint       string
	CredentialsDir string
	// QPS bounds the calls per second, to stay inside the account's KMS quota.
	QPS float64
	// EnterpriseProject is the enterprise project new keys are created in ("0", the default
	// project, when empty): CreateKey's enterprise_project_id.
	EnterpriseProject string
	// Timeout bounds each request (default RequestTimeout).
	Timeout time.Duration
	// AuthBackoff is the first wait of every call after the credentials are refused (default
	// DefaultAuthBackoff; see breaker).
	AuthBackoff time.Duration
}

// RequestTimeout bounds one KMS request. The SDK's own default is 120 s, long enough for one
// stuck call to hold a reconcile worker for two minutes; KMS-FACTS.md gives 5-8 s for the
// gateway's 502/504.
const RequestTimeout = 8 * time.Second

var flags Config

func init() {
	kms.Register(kms.Registration{
		Name: Name,
		AddFlags: func(fs *flag.FlagSet) {
			fs.StringVar(&flags.Region, "huaweicloud-region", os.Getenv("HUAWEICLOUD_SDK_REGION"), "Huawei Cloud region of the KMS, e.g. cn-north-4.")
			fs.StringVar(&flags.ProjectID, "huaweicloud-project-id", os.Getenv("HUAWEICLOUD_SDK_PROJECT_ID"), "Huawei Cloud project ID in that region.")
			fs.StringVar(&flags.Endpoint, "huaweicloud-endpoint", "", "KMS endpoint URL, to reach KMS through a private endpoint; default: the region's.")
			fs.StringVar(&flags.CredentialsDir, "huaweicloud-credentials-dir", "", "Directory with files access-key and secret-key (a mounted Secret); default: HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK.")
			fs.Float64Var(&flags.QPS, "kms-qps", 10, "Most KMS calls per second, to stay inside the KMS quota.")
			fs.StringVar(&flags.EnterpriseProject, "huaweicloud-enterprise-project", os.Getenv("HUAWEICLOUD_SDK_ENTERPRISE_PROJECT_ID"),
				"Enterprise project ID new keys are created in; default: 0, the default project.")
		},
		New: func(_ context.Context, _ kms.Env) (kms.Provider, error) { return New(flags) },
	})
}

// New builds the provider from configuration.
func New(cfg Config) (*Provider, error) {
	ak, sk, err := credentials(cfg.CredentialsDir)
	if err != nil {
		return nil, err
	}
	if cfg.ProjectID == "" {
		return nil, fmt.Errorf("huaweicloud: set --huaweicloud-project-id (or HUAWEICLOUD_SDK_PROJECT_ID)")
	}
	cred, err := basic.NewCredentialsBuilder().WithAk(ak).WithSk(sk).WithProjectId(cfg.ProjectID).SafeBuild()
	if err != nil {
		return nil, fmt.Errorf("huaweicloud credentials: %w", err)
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
	retried := &retrying{next: limited, attempts: 5, backoff: 200 * time.Millisecond}
	httpConfig := config.DefaultHttpConfig().WithTimeout(timeout).WithHttpRoundTripper(&breaker{next: retried, initial: backoff, now: time.Now})
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
	p := NewWithClient(kmsv2.NewKmsClient(client))
	p.enterpriseProject = cfg.EnterpriseProject
	return p, nil
}

func credentials(dir string) (ak, sk string, err error) {
	if dir == "" {
		ak, sk = os.Getenv("HUAWEICLOUD_SDK_AK"), os.Getenv("HUAWEICLOUD_SDK_SK")
		if ak == "" || sk == "" {
			return "", "", fmt.Errorf("huaweicloud: no credentials: set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or --huaweicloud-credentials-dir")
		}
		return ak, sk, nil
	}
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", fmt.Errorf("huaweicloud credentials: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if ak, err = read("access-key"); err != nil {
		return "", "", err
	}
	if sk, err = read("secret-key"); err != nil {
		return "", "", err
	}
	return ak, sk, nil
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
