// Package operator runs the whole operator (manager, reconciler, embedded KMS) in a test
// process against a testenv control plane, for tests of what sits in front of it, such as
// kubectl-cmk. The controllers' own tests run theirs through their harness, with a fake clock
// and failures injected; both build it with controllers.NewManager, as main does.
package operator

import (
	"context"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

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

// Run runs the operator for the keys in namespace with the given provider until the test ends,
// built as main builds it (controllers.NewManager), without the KMS metrics.
func Run(t testing.TB, env *testenv.Env, namespace string, provider kms.Provider) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := controllers.NewManager(ctx, env.Config, controllers.ManagerOptions{
		KMS: provider, Namespaces: []string{namespace}, Logger: logr.Discard(), Workers: 4, SkipNameValidation: true,
	})
	if err != nil {
		cancel()
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
