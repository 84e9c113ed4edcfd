package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/kmsmetrics"
	"github.com/cmk-operator/cmk-operator/internal/scheme"
)

// ManagerOptions are what differs between the manager main runs and those the tests run.
// NewManager sets the rest (the scheme, the cache, the lease, the reconciler's wiring, the
// health checks) the same for all, so that a test runs the operator as it is deployed.
type ManagerOptions struct {
	// KMS is the provider the reconciler drives. Its background work (manager.Runnable: the
	// embedded KMS's reaper), if it has any, runs with the manager.
	KMS kms.Provider
	// NoBackground leaves the provider's background work off, as a KMS that is late to act.
	NoBackground bool
	// WrapKMS, when set, wraps the provider the reconciler calls (tests delay or fail KMS calls).
	WrapKMS func(kms.Provider) kms.Provider
	// InstrumentAs, when set, counts and times the KMS calls under this provider name
	// (internal/kms/kmsmetrics). The counters are the process's: tests that do not read them
	// leave it empty.
	InstrumentAs string

	// Metrics is the metrics endpoint. An empty BindAddress serves none, unlike
	// controller-runtime's default of :8080, so that no test binds a fixed port.
	Metrics                metricsserver.Options
	HealthProbeBindAddress string
	PprofBindAddress       string
	// LeaderElection makes the manager act only while it holds the Lease
	// cmk-operator.kms.cmk.io in LeaderElectionNamespace, which the replicas share.
	LeaderElection          bool
	LeaderElectionNamespace string
	// Namespaces, when set, are the only namespaces the cache, and so the reconciler, sees.
	Namespaces []string
	// Logger, when set, receives the manager's and the reconciler's logs; else ctrl.Log does.
	Logger logr.Logger

	// WrapClient, when set, wraps the reconciler's client (tests inject failures).
	WrapClient func(client.Client) client.Client
	// Clock, SyncPeriod and ImportRetry are the reconciler's; zero for the defaults.
	Clock       clock.PassiveClock
	SyncPeriod  time.Duration
	ImportRetry time.Duration
	// OrphanSweepInterval is how often the orphan sweep (orphans.go) runs after the one at
	// start; 0 runs none. main runs it hourly (DefaultOrphanSweepInterval); tests that do not
	// look at it leave it off.
	OrphanSweepInterval time.Duration
	// UsageKinds are the kinds whose objects declare, by annotation, the keys they use (nil:
	// DefaultUsageKinds).
	UsageKinds []string
	// Workers is how many keys are reconciled at once; 0 for one.
	Workers int
	// SkipNameValidation lets a process run more than one manager, as tests do.
	SkipNameValidation bool
}

// NewManager builds the operator's manager: the CustomerMasterKey reconciler on opts.KMS, the
// provider's background work and the health checks. ctx bounds the reconciler's setup (its
// cache indexes); the caller starts the manager.
func NewManager(ctx context.Context, restConfig *rest.Config, opts ManagerOptions) (manager.Manager, error) {
	metrics := opts.Metrics
	if metrics.BindAddress == "" {
		metrics.BindAddress = "0"
	}
	var namespaces map[string]cache.Config
	for _, ns := range opts.Namespaces {
		if namespaces == nil {
			namespaces = map[string]cache.Config{}
		}
		namespaces[ns] = cache.Config{}
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme: scheme.Scheme,
		// managedFields are never read here; without them the cache of thousands of keys is
		// about half the size.
		Cache: cache.Options{DefaultTransform: cache.TransformStripManagedFields(), DefaultNamespaces: namespaces,
			ByObject: consumerCache()},
		Metrics:                 metrics,
		HealthProbeBindAddress:  opts.HealthProbeBindAddress,
		PprofBindAddress:        opts.PprofBindAddress,
		Logger:                  opts.Logger,
		LeaderElection:          opts.LeaderElection,
		LeaderElectionID:        "cmk-operator.kms.cmk.io",
		LeaderElectionNamespace: opts.LeaderElectionNamespace,
		// A stopping leader hands the lease back at once, so a rollout or a drained node
		// does not leave keys unattended for a lease duration. Safe here: the manager exits
		// when it stops, and nothing acts after the lease is released.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}

	provider := opts.KMS
	if task, ok := provider.(manager.Runnable); ok && !opts.NoBackground {
		if err := mgr.Add(task); err != nil {
			return nil, err
		}
	}
	// Wrapped only now: a wrapper passes on the optional interfaces of the kms package, not
	// manager.Runnable, which the provider's own background work (the embedded reaper) needs.
	if opts.WrapKMS != nil {
		provider = opts.WrapKMS(provider)
	}
	if opts.InstrumentAs != "" {
		provider = kmsmetrics.Instrument(opts.InstrumentAs, provider)
	}
	c := mgr.GetClient()
	if opts.WrapClient != nil {
		c = opts.WrapClient(c)
	}
	r := &CustomerMasterKeyReconciler{
		Client:      c,
		KMS:         provider,
		APIReader:   mgr.GetAPIReader(),
		Recorder:    mgr.GetEventRecorder("cmk-operator"),
		Clock:       opts.Clock,
		SyncPeriod:  opts.SyncPeriod,
		ImportRetry: opts.ImportRetry,
		UsageKinds:  opts.UsageKinds,
	}
	if err := r.SetupWithManager(ctx, mgr, controller.Options{
		MaxConcurrentReconciles: opts.Workers, SkipNameValidation: &opts.SkipNameValidation, Logger: opts.Logger,
	}); err != nil {
		return nil, fmt.Errorf("setting up controller: %w", err)
	}
	if rec, ok := kms.As[kms.Recorder](provider); ok && opts.OrphanSweepInterval > 0 {
		sweep := &orphanSweep{r: r, rec: rec, interval: opts.OrphanSweepInterval, namespaces: opts.Namespaces,
			log: mgr.GetLogger().WithName("orphan-sweep")}
		if err := mgr.Add(sweep); err != nil {
			return nil, err
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return nil, err
	}
	return mgr, nil
}
