// Package testenv starts the real kube-apiserver and etcd that `make envtest-assets` builds,
// with the project's CRDs installed, for tests and benchmarks. It never skips: missing
// binaries are an error that says how to build them.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/cmk-operator/cmk-operator/internal/scheme"
)

const operatorModule = "github.com/cmk-operator/cmk-operator"

// Scheme knows the built-in types and the CustomerMasterKey API.
var Scheme = scheme.Scheme

// Env is a running control plane.
type Env struct {
	Config *rest.Config
	// Client talks to the apiserver directly; it can be wrapped with interceptor.NewClient.
	Client client.WithWatch
	env    *envtest.Environment
	// Assets is the directory holding kube-apiserver, etcd and kubectl.
	Assets string
}

// Start starts kube-apiserver and etcd from $KUBEBUILDER_ASSETS, else from bin/k8s at the
// module root, and installs config/crd/bases.
func Start() (*Env, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s")
	}
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		return nil, fmt.Errorf("no kube-apiserver in %s: run 'make envtest-assets' (or 'make test', which does it)", assets)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd: %w", err)
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: Scheme})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: c, env: env, Assets: assets}, nil
}

// Main starts the control plane for a package's tests, runs setup, runs the tests, stops it
// and exits; call it from TestMain. It fails, never skips, when the binaries are missing.
func Main(m *testing.M, env **Env, setup ...func(*Env) error) {
	// Tests log through their own loggers; this silences controller-runtime's warning that
	// no global logger was set.
	ctrllog.SetLogger(logr.Discard())
	e, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*env = e
	for _, f := range setup {
		if err := f(e); err != nil {
			fmt.Fprintln(os.Stderr, err)
			_ = e.Stop()
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = e.Stop()
	os.Exit(code)
}

// Stop stops the control plane.
func (e *Env) Stop() error { return e.env.Stop() }

// CreateNamespace creates a namespace.
func (e *Env) CreateNamespace(ctx context.Context, name string) error {
	return e.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
}

// KubeConfig writes an admin kubeconfig for the control plane to path.
func (e *Env) KubeConfig(path string) error {
	user, err := e.env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	raw, err := user.KubeConfig()
	if err != nil {
		return err
	}
	return os.WriteFile(path, raw, 0o600)
}

// moduleRoot is the directory of the operator's go.mod above the working directory, passing
// the go.mod of a test module nested in it (test/gitops, say).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if raw, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && modulePath(raw) == operatorModule {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the go.mod of " + operatorModule + " is not found above the working directory")
		}
		dir = parent
	}
}

// modulePath is the path the module line of a go.mod names.
func modulePath(gomod []byte) string {
	for line := range strings.Lines(string(gomod)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}
