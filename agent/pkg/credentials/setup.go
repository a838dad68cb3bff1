package credentials

import (
	"context"
	"log/slog"

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
	// PullSecrets turns pull-secret lookup on; it needs Lender.
	PullSecrets bool
	// Lender is the aggregator that lends the pull secrets of this node's
	// pods; nil when the agent has none (check without --aggregator).
	Lender Lender
	// ProviderConfig and ProviderBinDir are the kubelet's
	// --image-credential-provider-config and -bin-dir; empty: off.
	ProviderConfig, ProviderBinDir string
	Log                            *slog.Logger
}

// New builds the kubelet-ordered chain of the sources that are on.
func New(ctx context.Context, opts Options) (Chain, error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	var ps *PullSecrets
	switch {
	case !opts.PullSecrets:
		log.InfoContext(ctx, "pull-secret lookup off (--pull-secrets=off)")
	case opts.Lender == nil:
		log.InfoContext(ctx, "pull-secret lookup off: no aggregator to lend the pull secrets of this node's pods (give --aggregator); the agent itself reads no Secrets")
	default:
		var err error
		if ps, err = NewPullSecrets(PullSecretsOptions{NodeName: opts.NodeName, Lender: opts.Lender, Log: log}); err != nil {
			return nil, err
		}
		log.InfoContext(ctx, "pull-secret lookup on: the aggregator lends the pull secrets of this node's pods", "node", opts.NodeName)
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
