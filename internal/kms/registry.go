package kms

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"sync"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Env is what the manager hands a provider when it builds one.
type Env struct {
	// Client reads and writes Kubernetes objects directly, without a cache, so that a provider
	// keeping state in the cluster reads back its own writes.
	Client client.Client
	// Namespace is the provider's own namespace (--kms-namespace), for state and credentials.
	Namespace string
	// Clock is the time source; tests pass a fake one.
	Clock clock.WithTicker
	Log   logr.Logger
}

// Registration describes one provider.
type Registration struct {
	// Name is the value of --kms-provider that selects this provider.
	Name string
	// AddFlags registers the provider's own flags; nil when it has none.
	AddFlags func(fs *flag.FlagSet)
	// New builds the provider.
	New func(ctx context.Context, env Env) (Provider, error)
}

var (
	mu       sync.RWMutex
	registry = map[string]Registration{}
)

// Register makes a provider selectable by name. Providers call it from init.
func Register(r Registration) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[r.Name]; dup {
		panic(fmt.Sprintf("kms: provider %q registered twice", r.Name))
	}
	registry[r.Name] = r
}

// Names lists the registered providers, sorted.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// AddFlags registers every provider's own flags.
func AddFlags(fs *flag.FlagSet) {
	for _, n := range Names() {
		mu.RLock()
		addFlags := registry[n].AddFlags
		mu.RUnlock()
		if addFlags != nil {
			addFlags(fs)
		}
	}
}

// New builds the provider registered under name.
func New(ctx context.Context, name string, env Env) (Provider, error) {
	mu.RLock()
	r, ok := registry[name]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown KMS provider %q: choose one of %v", name, Names())
	}
	return r.New(ctx, env)
}
