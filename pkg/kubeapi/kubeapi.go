// Package kubeapi finds the Kubernetes API a pullwatch binary may talk to:
// in-cluster configuration, else a kubeconfig, else none. Both binaries run
// without it; the features that need the API switch off and say so once.
package kubeapi

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrNotConfigured is returned by Load when the process runs outside a
// cluster and no kubeconfig was given. The binaries work without the API,
// minus the features that need it.
var ErrNotConfigured = errors.New("no Kubernetes API configuration")

// Config is a usable API configuration and where it came from.
type Config struct {
	Rest *rest.Config
	// Source is "in-cluster" or the kubeconfig value it was loaded from.
	Source string
}

// Load returns the in-cluster configuration when running in a pod, else
// the one from kubeconfig (a path, or a list of paths as in $KUBECONFIG).
// Without either it returns an error wrapping ErrNotConfigured; a
// kubeconfig that is given but unusable is a different error.
func Load(kubeconfig string) (*Config, error) {
	cfg, inClusterErr := rest.InClusterConfig()
	if inClusterErr == nil {
		return &Config{Rest: cfg, Source: "in-cluster"}, nil
	}
	if kubeconfig == "" {
		return nil, fmt.Errorf("%w: not in a cluster (%v) and no kubeconfig given", ErrNotConfigured, inClusterErr)
	}
	// Precedence (not ExplicitPath) so that a list of files merges like
	// kubectl does; missing files in it are skipped, which is why an
	// empty result is reported below.
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(kubeconfig)}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if clientcmd.IsEmptyConfig(err) {
		return nil, fmt.Errorf("kubeconfig %q: no such file or no cluster in it", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %q: %w", kubeconfig, err)
	}
	return &Config{Rest: cfg, Source: kubeconfig}, nil
}

// Announce loads the configuration and logs its outcome once: where the API
// config came from, or that the named features are off. It returns nil
// when the API is not configured; a configuration that is given but broken
// is returned as an error.
func Announce(log *slog.Logger, kubeconfig string, features string) (*Config, error) {
	cfg, err := Load(kubeconfig)
	switch {
	case errors.Is(err, ErrNotConfigured):
		log.Info("Kubernetes API not configured; "+features+" off", "why", err.Error())
		return nil, nil
	case err != nil:
		return nil, err
	}
	log.Info("Kubernetes API configured", "source", cfg.Source, "host", cfg.Rest.Host)
	return cfg, nil
}
