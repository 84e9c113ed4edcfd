package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cmk-operator/cmk-operator/controllers"
	"github.com/cmk-operator/cmk-operator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// TestStopReleasesLease runs the manager as main does, with leader election, and stops it: it
// hands the lease back at once (no failover wait for the next replica) and logs no error.
func TestStopReleasesLease(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	ctrl.SetLogger(funcr.New(func(prefix, args string) {
		if strings.Contains(args, `"error"=`) {
			mu.Lock()
			logged = append(logged, prefix+" "+args)
			mu.Unlock()
		}
	}, funcr.Options{}))
	defer ctrl.SetLogger(logr.Discard())

	ns := "leader-" + string(uuid.NewUUID())[:8]
	if err := env.CreateNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, rest.CopyConfig(env.Config), managerConfig{metricsAddr: "0", probeAddr: "0", leaderElect: true, provider: "embedded",
			kmsNamespace: ns, syncPeriod: controllers.DefaultSyncPeriod, workers: 1, skipNameValidation: true})
	}()

	lease := &coordinationv1.Lease{}
	key := client.ObjectKey{Namespace: ns, Name: "cmk-operator.kms.cmk.io"}
	holder := func() string {
		if err := env.Client.Get(context.Background(), key, lease); err != nil || lease.Spec.HolderIdentity == nil {
			return ""
		}
		return *lease.Spec.HolderIdentity
	}
	for deadline := time.Now().Add(30 * time.Second); holder() == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the manager never became leader")
		}
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the manager did not stop")
	}
	if h := holder(); h != "" {
		t.Errorf("the stopped leader still holds the lease (%s): the next replica waits for it to expire", h)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) > 0 {
		t.Errorf("errors logged on a clean stop:\n%s", strings.Join(logged, "\n"))
	}
}
