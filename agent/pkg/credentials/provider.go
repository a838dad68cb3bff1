package credentials

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	kubeletconfigv1 "k8s.io/kubelet/config/v1"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"

	"github.com/pullwatch/pullwatch/pkg/dockerauth"
)

// PluginsOptions configure Plugins.
type PluginsOptions struct {
	// Config is the kubelet's --image-credential-provider-config file.
	Config string
	// BinDir is the kubelet's --image-credential-provider-bin-dir.
	BinDir string
	// Root is where Config and BinDir, node paths, are read (--host-root);
	// the plugins run from there, in the agent's container.
	Root hostfs.Root
	// Timeout bounds one plugin run. Default 1 minute, the kubelet's.
	Timeout time.Duration
	// FailureBackoff is how long a provider that failed is not run again
	// (its lookups fail at once with the same error). Default 30s.
	FailureBackoff time.Duration
	Log            *slog.Logger
	Now            func() time.Time
	// Environ is the environment plugins inherit before their config's
	// env (the kubelet passes its own). Default os.Environ.
	Environ func() []string
}

// Plugins runs the kubelet's credential provider exec plugins, as the
// kubelet would: for an image matching a provider's matchImages, the
// provider's binary from the bin dir gets a CredentialProviderRequest on
// stdin and answers a CredentialProviderResponse on stdout, cached per its
// cacheKeyType and cacheDuration.
type Plugins struct {
	providers []*plugin
	// tokenProviders need a service account token (KEP-4412): not run,
	// only matched (name and matchImages).
	tokenProviders []*plugin
}

// plugin is one configured provider.
type plugin struct {
	name        string
	path        string
	apiVersion  string
	args        []string
	env         []string
	matchImages []string
	defaultTTL  time.Duration
	timeout     time.Duration
	backoff     time.Duration
	log         *slog.Logger
	now         func() time.Time
	environ     func() []string

	group       singleflight.Group
	mu          sync.Mutex
	cache       map[string]pluginCacheEntry
	purged      time.Time
	failedUntil time.Time
	failure     error
}

type pluginCacheEntry struct {
	entries []dockerauth.Entry
	expires time.Time
}

const globalCacheKey = "global"

// LoadPlugins reads the provider config. A missing config file is not an
// error: it returns nil (no plugins), and says so. Providers that need a
// service account token (tokenAttributes) are not run: pullwatch cannot
// mint tokens for the pods' service accounts; it logs them once, and
// NeedsServiceAccountToken names them for the images they match.
func LoadPlugins(ctx context.Context, opts PluginsOptions) (*Plugins, error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	data, err := readBounded(opts.Root.Path(opts.Config))
	if errors.Is(err, fs.ErrNotExist) {
		log.InfoContext(ctx, "no credential provider config; credential provider plugins off", "config", opts.Config)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("credential provider config %s: %w", opts.Config, err)
	}
	cfg, err := parseProviderConfig(data)
	if err != nil {
		return nil, fmt.Errorf("credential provider config %s: %w", opts.Config, err)
	}
	if opts.BinDir == "" {
		return nil, fmt.Errorf("credential provider config %s is set but --image-credential-provider-bin-dir is not", opts.Config)
	}
	ps := &Plugins{}
	for _, c := range cfg.Providers {
		if c.TokenAttributes != nil {
			log.WarnContext(ctx, "credential provider needs service account tokens (tokenAttributes, KEP-4412); pullwatch does not run it: images it matches that the registry refuses without it are reported unknown, naming it",
				"provider", c.Name, "config", opts.Config)
			ps.tokenProviders = append(ps.tokenProviders, &plugin{name: c.Name, matchImages: c.MatchImages})
			continue
		}
		p := newPlugin(c, opts, log)
		if st, err := os.Stat(p.path); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			// The kubelet refuses to start then; the agent keeps trying, so
			// a binary installed later is picked up.
			log.ErrorContext(ctx, "credential provider binary missing or not executable", "provider", c.Name, "path", p.path)
		}
		ps.providers = append(ps.providers, p)
	}
	log.InfoContext(ctx, "credential provider plugins configured", "config", opts.Config, "bin_dir", opts.BinDir, "providers", ps.names())
	return ps, nil
}

func newPlugin(c kubeletconfigv1.CredentialProvider, opts PluginsOptions, log *slog.Logger) *plugin {
	p := &plugin{
		name:        c.Name,
		path:        opts.Root.Path(filepath.Join(opts.BinDir, c.Name)),
		apiVersion:  c.APIVersion,
		args:        c.Args,
		matchImages: c.MatchImages,
		defaultTTL:  c.DefaultCacheDuration.Duration,
		timeout:     opts.Timeout,
		backoff:     opts.FailureBackoff,
		log:         log,
		now:         opts.Now,
		environ:     opts.Environ,
		cache:       map[string]pluginCacheEntry{},
	}
	for _, e := range c.Env {
		p.env = append(p.env, e.Name+"="+e.Value)
	}
	if p.timeout <= 0 {
		p.timeout = time.Minute
	}
	if p.backoff <= 0 {
		p.backoff = 30 * time.Second
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.environ == nil {
		p.environ = os.Environ
	}
	return p
}

// NeedsServiceAccountToken implements TokenProviders.
func (ps *Plugins) NeedsServiceAccountToken(ref imageref.Ref) string {
	if ps == nil {
		return ""
	}
	for _, p := range ps.tokenProviders {
		if p.matches(ref.Name()) {
			return p.name
		}
	}
	return ""
}

func (ps *Plugins) names() []string {
	var out []string
	for _, p := range ps.providers {
		out = append(out, p.name)
	}
	return out
}

// Lookup implements Provider: every provider whose matchImages match ref
// is asked (or its cached answer used), in config order; their answers go
// into one keyring, as in the kubelet, and the keyring's matches for ref
// are returned, most specific first. A provider that fails is named in
// the error; the others still count.
func (ps *Plugins) Lookup(ctx context.Context, ref imageref.Ref, _ []Pod) ([]Credential, error) {
	if ps == nil {
		return nil, nil
	}
	image := ref.Name()
	kr := &dockerauth.Keyring{}
	var errs []error
	for _, p := range ps.providers {
		if !p.matches(image) {
			continue
		}
		entries, err := p.provide(ctx, image)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		kr.Add(entries)
	}
	var out []Credential
	for _, up := range kr.Lookup(image) {
		out = append(out, Credential{Username: up.Username, Secret: up.Password, Source: SourceCredentialProvider})
	}
	return out, errors.Join(errs...)
}

func (p *plugin) matches(image string) bool {
	for _, m := range p.matchImages {
		if dockerauth.MatchImage(m, image) {
			return true
		}
	}
	return false
}

// provide returns the provider's auth entries for image: cached (by image,
// then registry, then global, as the kubelet looks), else from one run of
// the plugin (concurrent lookups of the same image share it).
func (p *plugin) provide(ctx context.Context, image string) ([]dockerauth.Entry, error) {
	if entries, ok, err := p.cached(image); ok || err != nil {
		return entries, err
	}
	v, err, _ := p.group.Do(image, func() (any, error) {
		resp, err := p.exec(ctx, image)
		if err != nil {
			if ctx.Err() == nil {
				p.mu.Lock()
				p.failedUntil, p.failure = p.now().Add(p.backoff), err
				p.mu.Unlock()
			}
			return nil, err
		}
		p.store(image, resp)
		return resp.entries, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]dockerauth.Entry), nil
}

// cached looks the cache up; on a miss during a failure backoff it
// returns the failure.
func (p *plugin) cached(image string) ([]dockerauth.Entry, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if now.Sub(p.purged) > 15*time.Minute {
		p.purged = now
		for k, e := range p.cache {
			if !now.Before(e.expires) {
				delete(p.cache, k)
			}
		}
	}
	for _, key := range []string{"image|" + image, "registry|" + registryOf(image), globalCacheKey} {
		if e, ok := p.cache[key]; ok && now.Before(e.expires) {
			return e.entries, true, nil
		}
	}
	if now.Before(p.failedUntil) {
		return nil, false, fmt.Errorf("%w (not run again before %s)", p.failure, p.failedUntil.Format(time.RFC3339))
	}
	return nil, false, nil
}

// store caches a response under its cacheKeyType for its cacheDuration
// (the provider's defaultCacheDuration when unset; 0 means not cached).
func (p *plugin) store(image string, r pluginResponse) {
	ttl := p.defaultTTL
	if r.cacheDuration != nil {
		ttl = *r.cacheDuration
	}
	if ttl <= 0 {
		return
	}
	var key string
	switch r.cacheKeyType {
	case "Image":
		key = "image|" + image
	case "Registry":
		key = "registry|" + registryOf(image)
	case "Global":
		key = globalCacheKey
	}
	p.mu.Lock()
	p.cache[key] = pluginCacheEntry{entries: r.entries, expires: p.now().Add(ttl)}
	p.mu.Unlock()
}

// registryOf is the kubelet's parseRegistry: the image's first component.
func registryOf(image string) string {
	host, _, _ := strings.Cut(image, "/")
	return host
}
