// Command manager runs the cmk-operator: the CustomerMasterKey controller and the KMS provider
// chosen with --kms-provider.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/cmk-operator/cmk-operator/controllers"
	"github.com/cmk-operator/cmk-operator/internal/keymetrics"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	_ "github.com/cmk-operator/cmk-operator/internal/kms/embedded"    // registers the "embedded" provider
	_ "github.com/cmk-operator/cmk-operator/internal/kms/huaweicloud" // registers the "huaweicloud" provider
	"github.com/cmk-operator/cmk-operator/internal/requestmetrics"
	"github.com/cmk-operator/cmk-operator/internal/scheme"
)

// Leader election keeps its Lease in the operator's own namespace.
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=cmk-system,resources=leases,verbs=get;list;watch;create;update;patch;delete

// The secure metrics endpoint asks the apiserver who a scraper is and whether it may read
// /metrics: config/rbac/metrics_auth_role.yaml grants that apart, as kubebuilder does, so
// that it goes with the endpoint.

func main() {
	cfg := bindFlags(flag.CommandLine)
	kms.AddFlags(flag.CommandLine)
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	if err := run(ctrl.SetupSignalHandler(), ctrl.GetConfigOrDie(), *cfg); err != nil {
		ctrl.Log.Error(err, "Manager stopped")
		os.Exit(1)
	}
}

// bindFlags registers the manager's own flags on fs, to be parsed into the returned config.
func bindFlags(fs *flag.FlagSet) *managerConfig {
	cfg := &managerConfig{}
	fs.StringVar(&cfg.metricsAddr, "metrics-bind-address", "0", "The address the metrics endpoint binds to, e.g. :8443 (HTTPS) or :8080 (--metrics-secure=false); 0 disables it.")
	fs.BoolVar(&cfg.metricsTLS, "metrics-secure", true, "Serve metrics over HTTPS, only to clients the apiserver authenticates and authorizes to get /metrics; --metrics-secure=false serves plain HTTP to anyone who can reach it.")
	fs.StringVar(&cfg.metricsCerts, "metrics-cert-path", "", "A directory holding tls.crt and tls.key for the metrics endpoint (a cert-manager Secret, for example), reloaded when they change; empty for a self-signed certificate.")
	fs.BoolVar(&cfg.enableHTTP2, "enable-http2", false, "Serve metrics over HTTP/2 as well; off by default because of HTTP/2's stream-reset and rapid-reset attacks (CVE-2023-44487, CVE-2023-39325).")
	fs.StringVar(&cfg.probeAddr, "health-probe-bind-address", ":8081", "The address the health probe endpoint binds to.")
	fs.StringVar(&cfg.pprofAddr, "pprof-bind-address", "0", "The address Go's profiling endpoint (/debug/pprof) binds to, e.g. 127.0.0.1:6060; 0 disables it.")
	fs.BoolVar(&cfg.leaderElect, "leader-elect", false, "Enable leader election, so that only one manager acts at a time.")
	fs.StringVar(&cfg.provider, "kms-provider", "embedded", fmt.Sprintf("The KMS provider to drive, one of %v.", kms.Names()))
	fs.StringVar(&cfg.kmsNamespace, "kms-namespace", defaultKMSNamespace(), "The namespace where the KMS provider keeps its state and credentials; $POD_NAMESPACE when that is set.")
	fs.DurationVar(&cfg.syncPeriod, "sync-period", controllers.DefaultSyncPeriod, "How often a settled key is checked against the KMS, to correct changes made outside Kubernetes.")
	fs.DurationVar(&cfg.orphanSweep, "orphan-sweep-interval", controllers.DefaultOrphanSweepInterval, "How often keys whose CustomerMasterKey vanished without its finalizer are found and given their recorded deletionPolicy (also once at start); 0 turns the sweep off.")
	fs.Func("usage-kinds", fmt.Sprintf("The kinds, as resource.group, whose objects may declare with the annotation kms.cmk.io/uses-key the keys of their namespace they use (default %s); the operator needs get, list and watch on each.", strings.Join(controllers.DefaultUsageKinds, ",")), func(v string) error {
		cfg.usageKinds = nil
		for k := range strings.SplitSeq(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				cfg.usageKinds = append(cfg.usageKinds, k)
			}
		}
		if cfg.usageKinds == nil {
			cfg.usageKinds = []string{}
		}
		return nil
	})
	fs.IntVar(&cfg.workers, "max-concurrent-reconciles", 16, "How many keys are reconciled at once.")
	fs.Float64Var(&cfg.apiQPS, "kube-api-qps", -1, "Most requests per second to the Kubernetes apiserver; -1 sets no limit in the client, "+
		"leaving the pace to the apiserver's API Priority and Fairness, as controller-runtime does by default (the workers already bound the requests in flight).")
	fs.IntVar(&cfg.apiBurst, "kube-api-burst", 200, "Most requests in a burst to the Kubernetes apiserver, with a --kube-api-qps above 0.")
	return cfg
}

type managerConfig struct {
	metricsAddr, probeAddr string
	metricsTLS             bool
	metricsCerts           string
	enableHTTP2            bool
	pprofAddr              string
	leaderElect            bool
	provider, kmsNamespace string
	syncPeriod             time.Duration
	orphanSweep            time.Duration
	usageKinds             []string
	workers                int
	apiQPS                 float64
	apiBurst               int
	// skipNameValidation lets tests run the manager more than once in a process.
	skipNameValidation bool
}

func run(ctx context.Context, restConfig *rest.Config, cfg managerConfig) error {
	log := ctrl.Log.WithName("setup")
	if os.Getenv("GOGC") == "" {
		// The manager's memory is mostly what it keeps: its caches of the resources and of the
		// embedded KMS's keys. Collecting when the heap has grown by half of that, rather than
		// doubled, keeps a manager of 10,000 keys within 150 MiB for a few percent more CPU.
		// GOGC, when set, decides instead.
		debug.SetGCPercent(gcPercent)
	}
	if cfg.apiQPS != 0 {
		restConfig.QPS, restConfig.Burst = float32(cfg.apiQPS), max(cfg.apiBurst, 1)
	}
	requestmetrics.Count(restConfig)
	metricsServer, err := metricsOptions(cfg)
	if err != nil {
		return err
	}
	// The provider keeps its own view of its own objects (the embedded KMS watches its key
	// Secrets, and nothing else, in the KMS namespace), apart from the manager's cache, which
	// holds no Secret.
	direct, err := client.NewWithWatch(restConfig, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		return fmt.Errorf("creating KMS client: %w", err)
	}
	provider, err := kms.New(ctx, cfg.provider, kms.Env{
		Client:    direct,
		Namespace: cfg.kmsNamespace,
		Clock:     clock.RealClock{},
		Log:       ctrl.Log.WithName("kms").WithName(cfg.provider),
	})
	if err != nil {
		return fmt.Errorf("starting KMS provider %q: %w", cfg.provider, err)
	}
	mgr, err := controllers.NewManager(ctx, restConfig, controllers.ManagerOptions{
		KMS:                     provider,
		InstrumentAs:            cfg.provider,
		Metrics:                 metricsServer,
		HealthProbeBindAddress:  cfg.probeAddr,
		PprofBindAddress:        cfg.pprofAddr,
		LeaderElection:          cfg.leaderElect,
		LeaderElectionNamespace: cfg.kmsNamespace,
		SyncPeriod:              cfg.syncPeriod,
		OrphanSweepInterval:     cfg.orphanSweep,
		UsageKinds:              cfg.usageKinds,
		Workers:                 cfg.workers,
		SkipNameValidation:      cfg.skipNameValidation,
	})
	if err != nil {
		return err
	}
	keys := &keymetrics.Collector{Reader: mgr.GetCache(), Elected: mgr.Elected()}
	if err := metrics.Registry.Register(keys); err != nil {
		return fmt.Errorf("registering the key metrics: %w", err)
	}
	defer metrics.Registry.Unregister(keys)

	log.Info("Starting manager", "kmsProvider", cfg.provider, "kmsNamespace", cfg.kmsNamespace, "syncPeriod", cfg.syncPeriod)
	return mgr.Start(ctx)
}

// metricsOptions serves the metrics endpoint as kubebuilder v4 scaffolds it: HTTPS, with each
// scraper's bearer token checked by a TokenReview and its access to /metrics by a
// SubjectAccessReview, and HTTP/1.1 only unless asked.
func metricsOptions(cfg managerConfig) (metricsserver.Options, error) {
	opts := metricsserver.Options{BindAddress: cfg.metricsAddr, SecureServing: cfg.metricsTLS}
	if !cfg.metricsTLS {
		if cfg.metricsCerts != "" {
			return opts, errors.New("--metrics-cert-path is for HTTPS: drop it, or --metrics-secure=false")
		}
		return opts, nil
	}
	opts.FilterProvider = filters.WithAuthenticationAndAuthorization
	if cfg.metricsCerts != "" {
		// controller-runtime falls back to a self-signed certificate when either file is
		// missing; a mistyped path or a Secret not mounted is said here instead.
		for _, f := range []string{"tls.crt", "tls.key"} {
			if _, err := os.Stat(filepath.Join(cfg.metricsCerts, f)); err != nil {
				return opts, fmt.Errorf("--metrics-cert-path: %w", err)
			}
		}
		opts.CertDir = cfg.metricsCerts
	}
	if !cfg.enableHTTP2 {
		opts.TLSOpts = append(opts.TLSOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	return opts, nil
}

// gcPercent is the manager's GOGC unless the environment sets one.
const gcPercent = 50

func defaultKMSNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "cmk-system"
}
