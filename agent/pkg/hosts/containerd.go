package hosts

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// ContainerdOptions configure the containerd resolver.
type ContainerdOptions struct {
	// ConfigFile is containerd's config.toml (default /etc/containerd/config.toml).
	ConfigFile string
	// ConfigPath overrides the registry config_path found in ConfigFile.
	ConfigPath string
	// Root is where the node's files are read (--host-root): ConfigFile,
	// ConfigPath, the paths config.toml and hosts.toml name, are the
	// node's paths.
	Root hostfs.Root
	// TempDir holds rewritten copies of hosts.toml files that name
	// absolute ca or client paths under a Root; "" is os.TempDir().
	TempDir string
	// UpdateClient adjusts each endpoint's HTTP client after containerd's
	// own settings (TLS) are applied: proxy and resolver.
	UpdateClient func(*http.Client) error
	// RuntimeVersion is containerd's version as CRI reports it; before 1.7
	// its hosts.toml reader differs (see legacyHosts).
	RuntimeVersion string
}

// Containerd resolves endpoints the way containerd's CRI plugin does: the
// hosts.toml files under config_path, read with containerd's own
// core/remotes/docker/config package again whenever they change
// (containerd re-reads them on every pull; the clients built from them are
// kept while they do not change, see loadedHosts), or the legacy
// registry.mirrors table.
type Containerd struct {
	hosts   docker.RegistryHosts
	mirrors map[string][]string
	opts    ContainerdOptions
	roots   []string // config_path roots, node paths
	copies  *hostsCopies

	loaded loadedHosts // each host's endpoints while its files are unchanged

	defaultOnce sync.Once
	defaultHTTP *http.Client
	defaultErr  error

	warnMu sync.Mutex
	warned map[string]string // hosts.toml path → last warning
	legacy bool              // containerd before 1.7: see legacyHosts
}

// legacyHosts reports whether containerd at version reads hosts.toml the
// 1.6 way: a file without any [host] table is refused ("invalid `host`
// tree") and the host falls back to its default endpoint, and a loopback
// registry without configuration is plain HTTP (2.x tries HTTPS first).
// The library this package uses is 2.x's, so those two cases are handled
// here.
func legacyHosts(version string) bool {
	v := strings.TrimPrefix(version, "v")
	var major, minor int
	if _, err := fmt.Sscanf(v, "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major < 1 || (major == 1 && minor < 7)
}

// NewContainerd reads containerd's configuration.
func NewContainerd(ctx context.Context, opts ContainerdOptions) (*Containerd, error) {
	if opts.ConfigFile == "" {
		opts.ConfigFile = DefaultContainerdConfig
	}
	cfg, err := ReadContainerdConfig(opts.Root, opts.ConfigFile)
	if err != nil {
		return nil, err
	}
	configPath := cfg.ConfigPath
	if opts.ConfigPath != "" {
		configPath = opts.ConfigPath
	}
	c := &Containerd{opts: opts, warned: map[string]string{}, legacy: legacyHosts(opts.RuntimeVersion), copies: &hostsCopies{parent: opts.TempDir}}
	if len(cfg.Mirrors) > 0 && configPath == "" {
		// containerd refuses both at once; with mirrors only, it uses them.
		c.mirrors = cfg.Mirrors
		logging.FromContext(ctx).InfoContext(ctx, "containerd registry mirrors from config.toml (deprecated registry.mirrors)", "files", cfg.Files, "hosts", len(cfg.Mirrors))
	}
	if configPath == "" {
		configPath = DefaultConfigPath
	}
	for _, root := range filepath.SplitList(configPath) {
		if root != "" {
			c.roots = append(c.roots, root)
		}
	}
	logging.FromContext(ctx).InfoContext(ctx, "containerd registry configuration", "config_files", cfg.Files, "config_path", strings.Join(c.roots, ":"), "host_root", opts.Root.Dir())
	c.hosts = config.ConfigureHosts(ctx, config.HostOptions{
		HostDir:      c.loaderHostDir,
		UpdateClient: opts.UpdateClient,
	})
	return c, nil
}

// hostDir finds the host's directory under the first config_path root
// that has one, as containerd's CRI plugin does for a list of roots; the
// directory is returned as the agent reads it (under the Root).
func (c *Containerd) hostDir(host string) (string, error) {
	for _, root := range c.roots {
		dir, err := config.HostDirFromRoot(c.opts.Root.Path(root))(host)
		if err == nil {
			return dir, nil
		}
		if !errdefs.IsNotFound(err) {
			return "", fmt.Errorf("registry host directory for %s under %s: %w", host, root, err)
		}
	}
	return "", errdefs.ErrNotFound
}

// Endpoints implements Resolver.
func (c *Containerd) Endpoints(ctx context.Context, ref imageref.Ref) ([]Endpoint, error) {
	host := ref.Registry()
	if eps, ok := c.mirrors[host]; ok {
		return c.legacyEndpoints(ctx, ref, eps)
	}
	if c.checkHostsFile(ctx, host) == hostsIgnored && !c.hasCertFiles(host) {
		return c.withDefaultClient(Defaults{}.Endpoints(ctx, ref))
	}
	// An ignored hosts.toml beside certificate files: containerd falls back
	// to those files (its loadCertFiles) for the default endpoint, and so
	// does the loader here, handed them alone (loaderHostDir).
	rhosts, err := c.loaded.get(host, c.fingerprint(host), c.hosts)
	if err != nil {
		return nil, fmt.Errorf("containerd registry hosts for %s: %w", host, err)
	}
	tag := ref.Digest() == ""
	out := make([]Endpoint, 0, len(rhosts))
	for _, rh := range rhosts {
		if rh.Host == "" {
			// e.g. server = "http": containerd could not dial it either.
			return nil, fmt.Errorf("containerd registry hosts for %s: an endpoint without a host (%q) in its hosts.toml", host, rh.Scheme+"://"+rh.Path)
		}
		ep := Endpoint{
			URL:    (&url.URL{Scheme: rh.Scheme, Host: rh.Host, Path: rh.Path}).String(),
			Role:   roleFor(host, rh.Host),
			Host:   host,
			Client: rh.Client,
			Header: rh.Header,
			Source: "hosts.toml",
		}
		// A tag needs pull and resolve; a digest only pull.
		switch {
		case rh.Capabilities&docker.HostCapabilityPull == 0:
			ep.Skip = "endpoint lacks the pull capability"
		case tag && rh.Capabilities&docker.HostCapabilityResolve == 0:
			ep.Skip = "endpoint lacks the resolve capability, which a tag needs"
		}
		out = append(out, ep)
	}
	return out, nil
}

// legacyEndpoints are the registry.mirrors endpoints, upstream appended
// after them unless listed, as containerd 1.x does.
func (c *Containerd) legacyEndpoints(ctx context.Context, ref imageref.Ref, urls []string) ([]Endpoint, error) {
	host := ref.Registry()
	def, _ := Defaults{}.Endpoints(ctx, ref)
	upstream := def[0].URL
	var out []Endpoint
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("containerd config: mirror endpoint %q for %s is not a URL", raw, host)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v2"
		}
		out = append(out, Endpoint{URL: u.String(), Role: roleFor(host, u.Host), Host: host, Source: "config.toml registry.mirrors"})
	}
	listed := false
	for _, ep := range out {
		listed = listed || ep.URL == upstream
	}
	if !listed {
		out = append(out, def[0])
	}
	return c.withDefaultClient(out, nil)
}

// withDefaultClient gives endpoints containerd's default transport on the
// node's network path.
func (c *Containerd) withDefaultClient(eps []Endpoint, err error) ([]Endpoint, error) {
	if err != nil {
		return nil, err
	}
	client, err := c.defaultClient()
	if err != nil {
		return nil, err
	}
	for i := range eps {
		eps[i].Client = client
	}
	return eps, nil
}

// What checkHostsFile found.
type hostsFile int

const (
	hostsUsed    hostsFile = iota // a hosts.toml containerd reads, or none
	hostsIgnored                  // containerd ignores the host's configuration: default endpoint
)

// checkHostsFile warns once per change when a host's hosts.toml is one
// containerd ignores (it does not parse, or containerd before 1.7 refuses
// its layout): containerd then falls back to the default endpoint, and so
// does this resolver, but an operator wants to know.
func (c *Containerd) checkHostsFile(ctx context.Context, host string) hostsFile {
	dir, err := c.hostDir(host)
	if err != nil || dir == "" {
		if c.legacy {
			return hostsIgnored // 1.6 defaults: plain HTTP for loopback
		}
		return hostsUsed
	}
	p := filepath.Join(dir, "hosts.toml")
	warning := c.ignoredHostsFile(p)
	c.warnMu.Lock()
	if c.warned[p] != warning && warning != "" {
		logging.FromContext(ctx).WarnContext(ctx, "registry hosts file ignored by the runtime", "file", p, "problem", warning)
	}
	c.warned[p] = warning
	c.warnMu.Unlock()
	if warning != "" {
		return hostsIgnored
	}
	return hostsUsed
}

// ignoredHostsFile says why containerd ignores the hosts.toml at p ("" when
// it reads it, or there is none): it does not parse, or containerd before
// 1.7 refuses its layout.
func (c *Containerd) ignoredHostsFile(p string) string {
	b, err := readLimited(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err.Error()
	default:
		var doc map[string]any
		if err := toml.Unmarshal(b, &doc); err != nil {
			return fmt.Sprintf("%s is not valid TOML (%s: %v); containerd ignores it and uses the default endpoint", p, tomlLine(err), err)
		} else if _, hasHost := doc["host"]; c.legacy && !hasHost {
			return fmt.Sprintf("%s has no [host] table, which containerd %s refuses (invalid `host` tree); it uses the default endpoint, with the certificate files of %s", p, c.opts.RuntimeVersion, filepath.Dir(p))
		}
	}
	return ""
}

func readLimited(p string) ([]byte, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxConfigBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, maxConfigBytes)
	}
	return os.ReadFile(p)
}
