package hosts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
	hosts  docker.RegistryHosts
	cfg    ContainerdRegistryConfig
	path   PullPath
	opts   ContainerdOptions
	roots  []string // config_path roots, node paths
	copies *hostsCopies

	loaded loadedHosts // each host's endpoints while its files are unchanged

	legacyMu      sync.Mutex
	legacyClients map[string]legacyClient // registry.configs tls clients by endpoint host

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
	major, minor, ok := runtimeVersion(version)
	return ok && (major < 1 || (major == 1 && minor < 7))
}

// runtimeVersion is containerd's release line, read from the version CRI
// reports ("v2.4.2", "1.6.20~ds1"); ok is false when it does not parse.
func runtimeVersion(version string) (major, minor int, ok bool) {
	v := strings.TrimPrefix(version, "v")
	if _, err := fmt.Sscanf(v, "%d.%d", &major, &minor); err != nil {
		return 0, 0, false
	}
	return major, minor, true
}

// PullPath is how containerd's CRI plugin finds a registry's endpoints,
// which depends on its version and configuration: containerd 1.x and 2.0
// read a list of host directory roots (config_path, colon-separated) or,
// without config_path, the legacy registry.mirrors and registry.configs
// (1.x applies configs' tls, 2.x does not); 2.1+ sets config_path to
// /etc/containerd/certs.d:/etc/docker/certs.d when neither is set, and
// pulls through the transfer service unless use_local_image_pull (or a
// setting the transfer service does not support) says otherwise, and the
// transfer service takes config_path as one directory, never a list. The
// credentials of registry.configs."host".auth count in every mode.
type PullPath struct {
	// Roots are the host directory roots searched in order; none when the
	// legacy tables are used.
	Roots []string
	// Legacy: registry.mirrors and registry.configs, no host directories.
	Legacy bool
	// LegacyTLS: registry.configs tls applies (containerd 1.x).
	LegacyTLS bool
	// Mode says which puller and why, for the log and reasons.
	Mode string
}

// PullPathFor is the pull path of containerd at version with cfg.
// An error is a configuration containerd itself refuses.
func PullPathFor(version string, cfg ContainerdRegistryConfig) (PullPath, error) {
	major, minor, ok := runtimeVersion(version)
	if !ok {
		major, minor = 2, 99 // unknown: the newest behaviour
	}
	configPath := cfg.ConfigPath
	if configPath != "" && len(cfg.Mirrors) > 0 {
		return PullPath{}, errors.New("containerd refuses registry.mirrors together with config_path (\"`mirrors` cannot be set when `config_path` is provided\"): its CRI plugin does not load; move the mirrors into hosts.toml files")
	}
	if (major > 2 || (major == 2 && minor >= 1)) && configPath == "" && len(cfg.Mirrors) == 0 {
		// 2.1+ (2.0 had no default: its CRI plugin reads no host
		// directory then, seen on 2.0.14).
		configPath = DefaultConfigPath
	}
	switch {
	case major < 2:
		if configPath == "" {
			return PullPath{Legacy: true, LegacyTLS: true, Mode: "containerd " + version + ": no config_path, the legacy registry.mirrors and registry.configs"}, nil
		}
		return PullPath{Roots: splitRoots(configPath), Mode: "containerd " + version + ": config_path " + configPath}, nil
	case minor >= 1 && !cfg.UseLocalImagePull && cfg.LocalPullBecause == "":
		// The transfer service: HostDirFromRoot(config_path), one root.
		return PullPath{Roots: []string{configPath}, Mode: "containerd " + version + ": transfer service pull, config_path " + configPath + " as one directory"}, nil
	default:
		mode := "containerd " + version + ": local pull"
		if minor >= 1 {
			if cfg.UseLocalImagePull {
				mode += " (use_local_image_pull)"
			} else {
				mode += " (" + cfg.LocalPullBecause + " is set, which the transfer service does not support)"
			}
		}
		if configPath == "" {
			return PullPath{Legacy: true, Mode: mode + ", the legacy registry.mirrors"}, nil
		}
		return PullPath{Roots: splitRoots(configPath), Mode: mode + ", config_path " + configPath}, nil
	}
}

func splitRoots(configPath string) []string {
	var roots []string
	for _, root := range filepath.SplitList(configPath) {
		if root != "" {
			roots = append(roots, root)
		}
	}
	return roots
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
	if opts.ConfigPath != "" {
		cfg.ConfigPath = opts.ConfigPath
	}
	path, err := PullPathFor(opts.RuntimeVersion, cfg)
	if err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", strings.Join(cfg.Files, ", "), err)
	}
	c := &Containerd{opts: opts, cfg: cfg, path: path, warned: map[string]string{}, legacy: legacyHosts(opts.RuntimeVersion), copies: &hostsCopies{parent: opts.TempDir}}
	c.roots = path.Roots
	logging.FromContext(ctx).InfoContext(ctx, "containerd registry configuration", "config_files", cfg.Files, "pull_path", path.Mode, "host_root", opts.Root.Dir())
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
	if c.path.Legacy {
		return c.legacyEndpoints(ctx, ref)
	}
	if c.checkHostsFile(ctx, host) == hostsIgnored && !c.hasCertFiles(host) {
		return c.withRuntimeConfig(c.withDefaultClient(Defaults{}.Endpoints(ctx, ref)))
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
	return c.withRuntimeConfig(out, nil)
}

// withRuntimeConfig gives each endpoint what the runtime's own config adds
// to every request: the credentials registry.configs names for its host
// (containerd sends them when the kubelet hands it none), and the
// registry.headers, which containerd's resolver sends to every registry
// before the host's own hosts.toml headers (docker.ResolverOptions.Headers;
// all four runtimes of the fidelity matrix do, on either pull path).
func (c *Containerd) withRuntimeConfig(eps []Endpoint, err error) ([]Endpoint, error) {
	if err != nil {
		return nil, err
	}
	for i := range eps {
		if len(c.cfg.Headers) > 0 {
			h := make(http.Header, len(c.cfg.Headers)+len(eps[i].Header))
			for k, v := range c.cfg.Headers {
				h[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
			}
			for k, v := range eps[i].Header {
				h[k] = append(h[k], v...)
			}
			eps[i].Header = h
		}
		u, perr := url.Parse(eps[i].URL)
		if perr != nil {
			continue
		}
		if hc, ok := c.cfg.Configs[u.Host]; ok && hc.Auth != nil {
			eps[i].RuntimeAuth = hc.Auth
		}
	}
	return eps, nil
}

// legacyEndpoints are the registry.mirrors endpoints of the host (or of
// "*"), upstream appended after them unless listed, each with the TLS
// settings registry.configs names for its host (containerd 1.x only), as
// containerd's registryEndpoints and registryHosts build them.
func (c *Containerd) legacyEndpoints(ctx context.Context, ref imageref.Ref) ([]Endpoint, error) {
	host := ref.Registry()
	urls, ok := c.cfg.Mirrors[host]
	source := "config.toml registry.mirrors"
	if !ok {
		urls = c.cfg.Mirrors["*"]
		source = `config.toml registry.mirrors."*"`
	}
	def, _ := Defaults{}.Endpoints(ctx, ref)
	apiHost, _ := imageref.APIHost(host)
	var out []Endpoint
	listed := false
	for _, raw := range urls {
		if !strings.Contains(raw, "://") {
			// containerd's addDefaultScheme: http for a loopback host.
			scheme := "https"
			if IsLocalhost(strings.SplitN(raw, "/", 2)[0]) {
				scheme = "http"
			}
			raw = scheme + "://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("containerd config: mirror endpoint %q for %s is not a URL", raw, host)
		}
		listed = listed || u.Host == host || u.Host == apiHost
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v2"
		}
		out = append(out, Endpoint{URL: u.String(), Role: roleFor(host, u.Host), Host: host, Source: source})
	}
	if !listed {
		def[0].Source = "default (after registry.mirrors)"
		out = append(out, def[0])
	}
	for i := range out {
		client, err := c.legacyClientFor(out[i])
		if err != nil {
			return nil, err
		}
		out[i].Client = client
	}
	return c.withRuntimeConfig(out, nil)
}

// legacyClientFor is the HTTP client containerd builds for a legacy
// endpoint: its default transport, with registry.configs tls for the
// endpoint's host on 1.x, and no certificate check for plain HTTP to a
// loopback registry on 2.x.
func (c *Containerd) legacyClientFor(ep Endpoint) (*http.Client, error) {
	u, _ := url.Parse(ep.URL)
	hc, hasConfig := c.cfg.Configs[u.Host]
	if !c.path.LegacyTLS || !hasConfig || !hc.HasTLS {
		return c.defaultClient()
	}
	// One client per host while its files are unchanged, as loadedHosts
	// keeps the hosts.toml ones: a client per image would cost a TLS
	// handshake per image and round.
	key := u.Host + "\x00" + c.fileStamps(hc.CAFile, hc.CertFile, hc.KeyFile)
	c.legacyMu.Lock()
	defer c.legacyMu.Unlock()
	if client, ok := c.legacyClients[u.Host]; ok && client.key == key {
		return client.client, nil
	}
	tlsConfig, err := c.legacyTLS(hc)
	if err != nil {
		return nil, fmt.Errorf("containerd config: registry.configs.%q.tls: %w", u.Host, err)
	}
	client := &http.Client{Transport: docker.DefaultHTTPTransport(tlsConfig)}
	if c.opts.UpdateClient != nil {
		if err := c.opts.UpdateClient(client); err != nil {
			return nil, err
		}
	}
	if c.legacyClients == nil {
		c.legacyClients = map[string]legacyClient{}
	}
	c.legacyClients[u.Host] = legacyClient{key: key, client: client}
	return client, nil
}

// legacyClient is a registry.configs host's client and the stamps of the
// files it was built from.
type legacyClient struct {
	key    string
	client *http.Client
}

// fileStamps names the node files' sizes and modification times ("" for
// none): a change makes a new client, as containerd reads them per pull.
func (c *Containerd) fileStamps(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(c.opts.Root.Path(p)); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", p, fi.Size(), fi.ModTime().UnixNano())
		} else {
			fmt.Fprintf(&b, "%s:missing;", p)
		}
	}
	return b.String()
}

// legacyTLS is containerd 1.x's getTLSConfig: the system pool plus
// ca_file, the client pair, insecure_skip_verify; files are node paths.
func (c *Containerd) legacyTLS(hc RegistryHostConfig) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: hc.InsecureSkipVerify} //nolint:gosec // the node's own setting
	if hc.CertFile != "" || hc.KeyFile != "" {
		if hc.CertFile == "" || hc.KeyFile == "" {
			return nil, errors.New("cert_file and key_file must be set together")
		}
		pair, err := tls.LoadX509KeyPair(c.opts.Root.Path(hc.CertFile), c.opts.Root.Path(hc.KeyFile))
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if hc.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		b, err := os.ReadFile(c.opts.Root.Path(hc.CAFile))
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool.AppendCertsFromPEM(b)
		cfg.RootCAs = pool
	}
	return cfg, nil
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
