package credentials

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// Options are the agent's credential settings (its flags).
type Options struct {
	NodeName string
	// Root is where the node's / is mounted; every path below is a node
	// path looked up under it, as the kubelet's flags name them.
	Root hostfs.Root
	// DockerConfig replaces the kubelet's keyring search path with one
	// file or directory.
	DockerConfig string
	// PullSecrets turns pull-secret lookup on; it needs Kube.
	PullSecrets bool
	// Kube is the API configuration; nil when there is no API.
	Kube *rest.Config
	// ProviderConfig and ProviderBinDir are the kubelet's
	// --image-credential-provider-config and -bin-dir; empty: off.
	ProviderConfig, ProviderBinDir string
	// SyncTimeout bounds the wait for the node's pods to be listed at
	// start. Default 30s.
	SyncTimeout time.Duration
	UserAgent   string
	Log         *slog.Logger
}

// New builds the kubelet-ordered chain of the sources that are on. The pod
// informer runs until ctx ends.
func New(ctx context.Context, opts Options) (Chain, error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	var ps *PullSecrets
	switch {
	case !opts.PullSecrets:
		log.InfoContext(ctx, "pull-secret lookup off (--pull-secrets=off)")
	case opts.Kube == nil:
		// kubeapi.Announce has said the API is not configured.
	default:
		cfg := rest.CopyConfig(opts.Kube)
		if opts.UserAgent != "" {
			cfg.UserAgent = opts.UserAgent
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("pull secrets: Kubernetes client: %w", err)
		}
		if ps, err = NewPullSecrets(client, PullSecretsOptions{NodeName: opts.NodeName, Log: log}); err != nil {
			return nil, err
		}
		ps.Start(ctx)
		timeout := opts.SyncTimeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		syncCtx, cancel := context.WithTimeout(ctx, timeout)
		synced := ps.WaitForSync(syncCtx)
		cancel()
		if synced {
			log.InfoContext(ctx, "pull-secret lookup on: watching the pods of this node", "node", opts.NodeName)
		} else {
			log.WarnContext(ctx, "pull-secret lookup: the pods of this node are not listed yet (check the agent's RBAC: list and watch pods); images used by pods are probed without their pull secrets until they are",
				"node", opts.NodeName, "waited", timeout)
		}
	}

	keyring := NewNodeKeyring(KeyringOptions{DockerConfig: opts.Root.Path(opts.DockerConfig), Root: opts.Root, Log: log})
	if opts.DockerConfig != "" {
		log.InfoContext(ctx, "node keyring from --docker-config", "path", keyring.Files()[0])
	}

	var plugins *Plugins
	if opts.ProviderConfig != "" {
		var err error
		plugins, err = LoadPlugins(ctx, PluginsOptions{
			Config: opts.ProviderConfig,
			BinDir: opts.ProviderBinDir,
			Root:   opts.Root,
			Log:    log,
		})
		if err != nil {
			// The kubelet would not start with it; the agent goes on without
			// plugins and says why, so one node's file does not stop it.
			log.ErrorContext(ctx, "credential provider plugins off", logging.ErrKey, err.Error())
			plugins = nil
		}
	}
	return NewChain(ps, keyring, plugins), nil
}
