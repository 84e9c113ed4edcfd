// Command controlplane runs a local kube-apiserver and etcd (the binaries `make envtest-assets`
// builds) on loopback with the CustomerMasterKey CRD installed, writes an admin kubeconfig, and
// runs until interrupted. `make dev` and `make demo` use it; it is not for production.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

func main() {
	var (
		kubeconfig = flag.String("write-kubeconfig", ".dev/kubeconfig", "Where to write the admin kubeconfig.")
		assets     = flag.String("assets", "bin/k8s", "Directory holding kube-apiserver, etcd and kubectl.")
		crds       = flag.String("crds", "config/crd/bases", "Directory of CRDs to install.")
		namespace  = flag.String("namespace", "cmk-system", "Namespace to create for the operator.")
	)
	flag.Parse()
	if err := run(*kubeconfig, *assets, *crds, *namespace); err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, assets, crds, namespace string) error {
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{crds},
		ErrorIfCRDPathMissing: true,
	}
	if _, err := env.Start(); err != nil {
		return fmt.Errorf("starting kube-apiserver and etcd from %s (run 'make envtest-assets'): %w", assets, err)
	}
	defer func() { _ = env.Stop() }()

	admin, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	c, err := client.New(admin.Config(), client.Options{})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if err := c.Create(ctx, ns); err != nil {
		return fmt.Errorf("creating namespace %s: %w", namespace, err)
	}
	raw, err := admin.KubeConfig()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(kubeconfig), 0o700); err != nil {
		return err
	}
	// Written last, through a rename, so a waiting script sees it only once everything is up.
	tmp := kubeconfig + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, kubeconfig); err != nil {
		return err
	}
	fmt.Printf("Control plane up at %s; kubeconfig %s\n", env.Config.Host, kubeconfig)
	<-ctx.Done()
	_ = os.Remove(kubeconfig)
	return nil
}
