package hosts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	podmanref "go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/pkg/sysregistriesv2"
	"go.podman.io/image/v5/types"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// CRI-O's default locations.
const (
	DefaultRegistriesConf    = "/etc/containers/registries.conf"
	DefaultRegistriesConfDir = "/etc/containers/registries.conf.d"
	DefaultCRIOCertsDir      = "/etc/containers/certs.d"
)

// CRIOOptions configure the CRI-O resolver. The paths are the node's,
// read under Root.
type CRIOOptions struct {
	RegistriesConf    string
	RegistriesConfDir string
	CertsDir          string
	Root              hostfs.Root
	UpdateClient      func(*http.Client) error
}

// CRIO resolves endpoints from CRI-O's registries.conf and
// registries.conf.d, with containers/image's own sysregistriesv2 (mirrors
// first, primary last; pull-from-mirror, mirror-by-digest-only, blocked,
// insecure, prefix rewriting).
type CRIO struct {
	opts CRIOOptions
}

// NewCRIO checks that the configuration loads.
func NewCRIO(ctx context.Context, opts CRIOOptions) (*CRIO, error) {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&opts.RegistriesConf, DefaultRegistriesConf)
	def(&opts.RegistriesConfDir, DefaultRegistriesConfDir)
	def(&opts.CertsDir, DefaultCRIOCertsDir)
	// containers/image reads the two as it is told, under the root; the
	// files in registries.conf.d are found in the directory read.
	opts.RegistriesConf = opts.Root.Path(opts.RegistriesConf)
	opts.RegistriesConfDir = opts.Root.Path(opts.RegistriesConfDir)
	c := &CRIO{opts: opts}
	if _, err := os.Stat(opts.RegistriesConf); errors.Is(err, fs.ErrNotExist) {
		// CRI-O runs with an empty configuration then (containers/image
		// does so for its default path), registries.conf.d still applied.
		logging.FromContext(ctx).InfoContext(ctx, "no CRI-O registries.conf: registries at their default endpoints, unless registries.conf.d says otherwise", "registries_conf", opts.RegistriesConf)
	}
	if _, err := sysregistriesv2.GetRegistries(c.system()); err != nil {
		return nil, fmt.Errorf("CRI-O registries configuration %s (+ %s): %w", opts.RegistriesConf, opts.RegistriesConfDir, err)
	}
	return c, nil
}

// system is what containers/image is told to read: registries.conf, or
// an empty one while the node has none.
func (c *CRIO) system() *types.SystemContext {
	conf := c.opts.RegistriesConf
	if _, err := os.Stat(conf); errors.Is(err, fs.ErrNotExist) {
		conf = os.DevNull
	}
	return &types.SystemContext{SystemRegistriesConfPath: conf, SystemRegistriesConfDirPath: c.opts.RegistriesConfDir}
}

// Endpoints implements Resolver.
func (c *CRIO) Endpoints(_ context.Context, ref imageref.Ref) ([]Endpoint, error) {
	// CRI-O re-reads the files when they change; so does this, through
	// sysregistriesv2's cache keyed by modification time.
	sysregistriesv2.InvalidateCache()
	reg, err := sysregistriesv2.FindRegistry(c.system(), ref.String())
	if err != nil {
		return nil, fmt.Errorf("CRI-O registries configuration: %w", err)
	}
	host := ref.Registry()
	if reg == nil {
		return c.withClients(Defaults{}.Endpoints(context.Background(), ref))
	}
	if reg.Blocked {
		return []Endpoint{{URL: "https://" + host + "/v2", Role: RoleUpstream, Host: host, Skip: "registry " + reg.Prefix + " is blocked in registries.conf", Source: "registries.conf"}}, nil
	}
	named, err := podmanref.ParseNormalizedNamed(ref.String())
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref.String(), err)
	}
	sources, err := reg.PullSourcesFromReference(named)
	if err != nil {
		return nil, fmt.Errorf("registries.conf rewrite of %s: %w", ref.String(), err)
	}
	var out []Endpoint
	for i, src := range sources {
		epHost := podmanref.Domain(src.Reference)
		apiHost, _ := imageref.APIHost(epHost)
		role := RoleMirror
		if i == len(sources)-1 {
			role = RoleUpstream // the primary location comes last
		}
		client, err := c.client(epHost, src.Endpoint.Insecure)
		if err != nil {
			return nil, err
		}
		out = append(out, Endpoint{
			URL:        "https://" + apiHost + "/v2",
			Role:       role,
			Host:       host,
			Repository: podmanref.Path(src.Reference),
			Client:     client,
			Source:     "registries.conf",
		})
	}
	return out, nil
}

func (c *CRIO) withClients(eps []Endpoint, err error) ([]Endpoint, error) {
	if err != nil {
		return nil, err
	}
	for i := range eps {
		host := strings.TrimPrefix(strings.TrimPrefix(eps[i].URL, "https://"), "http://")
		host = strings.TrimSuffix(host, "/v2")
		if eps[i].Client, err = c.client(host, false); err != nil {
			return nil, err
		}
	}
	return eps, nil
}

// client builds the TLS client CRI-O would use for host: CAs (*.crt) and
// client pairs (*.cert + *.key) from certs.d/<host>/, and for insecure
// registries no verification and a fallback to plain HTTP.
func (c *CRIO) client(host string, insecure bool) (*http.Client, error) {
	cfg := &tls.Config{InsecureSkipVerify: insecure} //nolint:gosec // what registries.conf insecure=true asks for
	nodeDir := filepath.Join(c.opts.CertsDir, host)
	entries, err := os.ReadDir(c.opts.Root.Path(nodeDir))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("CRI-O certificates for %s: %w", host, err)
	}
	for _, e := range entries {
		// Each file through the root: a symlink to an absolute path
		// points at the node's file.
		p := c.opts.Root.Path(filepath.Join(nodeDir, e.Name()))
		switch {
		case strings.HasSuffix(e.Name(), ".crt"):
			pem, err := readLimited(p)
			if err != nil {
				return nil, err
			}
			if cfg.RootCAs == nil {
				if cfg.RootCAs, err = x509.SystemCertPool(); err != nil {
					cfg.RootCAs = x509.NewCertPool()
				}
			}
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("CA file %s holds no PEM certificate", p)
			}
		case strings.HasSuffix(e.Name(), ".cert"):
			key := c.opts.Root.Path(filepath.Join(nodeDir, strings.TrimSuffix(e.Name(), ".cert")+".key"))
			pair, err := tls.LoadX509KeyPair(p, key)
			if err != nil {
				return nil, fmt.Errorf("client certificate %s with key %s: %w", p, key, err)
			}
			cfg.Certificates = append(cfg.Certificates, pair)
		}
	}
	client := &http.Client{Transport: docker.DefaultHTTPTransport(cfg)}
	if c.opts.UpdateClient != nil {
		if err := c.opts.UpdateClient(client); err != nil {
			return nil, err
		}
	}
	if insecure {
		client.Transport = docker.NewHTTPFallback(client.Transport)
	}
	return client, nil
}
