// Package operator runs the whole operator (manager, reconciler, embedded KMS) in a test
// process against a testenv control plane, for tests of what sits in front of it, such as
// kubectl-cmk. The controllers' own tests build theirs piece by piece.
package operator

import (
	"context"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/cmk-operator/cmk-operator/controllers"
	"github.com/cmk-operator/cmk-operator/internal/kms"
	"github.com/cmk-operator/cmk-operator/internal/kms/embedded"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

// Start runs the operator for the keys in namespace, with the embedded KMS in kmsNamespace
// (which it creates), until the test ends. Watching one namespace keeps the operators of
// successive tests off each other's keys.
func Start(t testing.TB, env *testenv.Env, namespace, kmsNamespace string) *embedded.Provider {
	t.Helper()
	if err := env.CreateNamespace(context.Background(), kmsNamespace); err != nil {
		t.Fatal(err)
	}
	provider, err := embedded.New(t.Context(), kms.Env{Client: env.Client, Namespace: kmsNamespace, Clock: clock.RealClock{}, Log: logr.Discard()}, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	Run(t, env, namespace, provider)
	return provider
}

// Run runs the operator for the keys in namespace with the given provider until the test ends.
func Run(t testing.TB, env *testenv.Env, namespace string, provider kms.Provider) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 testenv.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{namespace: {}}},
		Logger:                 logr.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if task, ok := provider.(manager.Runnable); ok {
		if err := mgr.Add(task); err != nil {
			t.Fatal(err)
		}
	}
	r := &controllers.CustomerMasterKeyReconciler{
		Client: mgr.GetClient(), KMS: provider, APIReader: mgr.GetAPIReader(),
		Recorder: mgr.GetEventRecorder("cmk-operator"), Clock: clock.RealClock{},
	}
	opts := controller.Options{SkipNameValidation: ptr.To(true), MaxConcurrentReconciles: 4, Logger: logr.Discard()}
	if err := r.SetupWithManager(ctx, mgr, opts); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
}
