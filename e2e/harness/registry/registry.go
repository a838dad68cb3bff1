// Package registry runs a real CNCF distribution registry (Debian's
// docker-registry 2.8) on 127.0.0.1 for end-to-end tests, optionally with TLS
// (a CA generated here) and htpasswd basic auth, and pushes tiny images to it
// with go-containerregistry.
package registry

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// Binary is the registry executable (Debian's package name for distribution).
const Binary = "docker-registry"

// Options configure Start.
type Options struct {
	// Port to listen on; 0 picks a free one (on 127.0.0.1 of this
	// process's network namespace).
	Port int
	// Host is the IP address to listen on (default 127.0.0.1); it is also
	// the host in image references (Addr) and, with TLS, in the
	// certificate.
	Host string
	// TLS serves HTTPS with a server certificate for 127.0.0.1, ::1,
	// localhost, Host and CertIPs, signed by a CA generated in dir (see
	// CAFile). Certificates already in dir are kept.
	TLS bool
	// CertIPs are more IP addresses for the server certificate.
	CertIPs []net.IP
	// Netns is a network namespace (a name under /run/netns, as ip netns
	// uses) to run the registry in, through nsenter --net. Host must then
	// be an address of that namespace; this process must be able to reach
	// it (see e2e/harness/netns).
	Netns string
	// Htpasswd enables basic auth with these users (user → password).
	Htpasswd map[string]string
	// Token enables the registry's bearer-token auth (auth.token). The token
	// server is the caller's. Mutually exclusive with Htpasswd.
	Token *TokenAuth
	// Detach starts the registry in its own session so it outlives this
	// process (pwlab). Stop still works, also after Attach.
	Detach bool
	// Binary overrides the registry executable (default "docker-registry").
	Binary string
}

// TokenAuth is the registry's auth.token configuration.
type TokenAuth struct {
	Realm          string // URL of the token server
	Service        string
	Issuer         string
	RootCertBundle string // PEM file with the certificate(s) that sign tokens
}

// Registry is a running (or stopped, restartable) registry.
type Registry struct {
	dir        string
	addr       string
	opts       Options
	configPath string
	logPath    string
	caFile     string
	caPool     *x509.CertPool
	user, pass string // credentials helpers use by default (first htpasswd user)
	proc       *proc.Process
	transport  *http.Transport
}

// state is what Attach needs to find a detached registry again.
type state struct {
	Addr   string   `json:"addr"`
	TLS    bool     `json:"tls"`
	CAFile string   `json:"caFile,omitempty"`
	Users  []string `json:"users,omitempty"`
	Binary string   `json:"binary"`
	Netns  string   `json:"netns,omitempty"`
}

// Start writes config.yml under dir (storage in dir/data, logs to
// dir/registry.log) and runs `docker-registry serve` until /v2/ answers.
func Start(ctx context.Context, dir string, opts Options) (*Registry, error) {
	if opts.Binary == "" {
		opts.Binary = Binary
	}
	if opts.Token != nil && len(opts.Htpasswd) > 0 {
		return nil, errors.New("registry: Token and Htpasswd are mutually exclusive")
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if net.ParseIP(opts.Host) == nil {
		return nil, fmt.Errorf("registry: Host %q is not an IP address", opts.Host)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	r := &Registry{
		dir:        dir,
		opts:       opts,
		configPath: filepath.Join(dir, "config.yml"),
		logPath:    filepath.Join(dir, "registry.log"),
	}
	if opts.TLS {
		if err := r.ensureCerts(); err != nil {
			return nil, err
		}
	}
	if len(opts.Htpasswd) > 0 {
		if err := r.writeHtpasswd(); err != nil {
			return nil, err
		}
	}
	r.initTransport()

	err = proc.StartOnFreePort(opts.Port, r.logPath, func(port int) error {
		r.addr = net.JoinHostPort(opts.Host, strconv.Itoa(port))
		if err := r.writeConfig(); err != nil {
			return err
		}
		return r.start(ctx)
	})
	if err != nil {
		return nil, err
	}
	if err := r.writeState(); err != nil {
		_ = r.Stop()
		return nil, err
	}
	return r, nil
}

// Attach finds a registry started (detached) in dir by an earlier process.
func Attach(dir string) (*Registry, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "registry.json"))
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("registry state: %w", err)
	}
	r := &Registry{
		dir:        dir,
		addr:       st.Addr,
		opts:       Options{TLS: st.TLS, Binary: st.Binary, Netns: st.Netns},
		configPath: filepath.Join(dir, "config.yml"),
		logPath:    filepath.Join(dir, "registry.log"),
		caFile:     st.CAFile,
	}
	if st.TLS {
		pem, err := os.ReadFile(st.CAFile)
		if err != nil {
			return nil, err
		}
		r.caPool = x509.NewCertPool()
		r.caPool.AppendCertsFromPEM(pem)
	}
	r.initTransport()
	pid, err := proc.ReadPidFile(filepath.Join(dir, "registry.pid"))
	if err == nil {
		if p, err := proc.Attach("registry", pid, r.configPath, r.logPath); err == nil {
			r.proc = p
		}
	}
	return r, nil
}

func (r *Registry) start(ctx context.Context) error {
	spec := proc.Spec{
		Name:    "registry",
		Path:    r.opts.Binary,
		Args:    []string{"serve", r.configPath},
		Dir:     r.dir,
		LogFile: r.logPath,
		Detach:  r.opts.Detach,
	}
	if r.opts.Netns != "" {
		// nsenter execs the registry in place: the pid stays the same.
		spec.Args = append([]string{"--net=/run/netns/" + r.opts.Netns, "--", spec.Path}, spec.Args...)
		spec.Path = "nsenter"
	}
	p, err := proc.Start(spec)
	if err != nil {
		return err
	}
	r.proc = p
	if err := proc.WritePidFile(filepath.Join(r.dir, "registry.pid"), p.Pid()); err != nil {
		_ = p.Stop(5 * time.Second)
		return err
	}
	err = proc.Poll(ctx, 30*time.Second, 50*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("registry exited: %v: %w", p.ExitErr(), proc.ErrStop)
		}
		return r.ping(ctx)
	})
	if err != nil {
		_ = p.Stop(5 * time.Second)
		return fmt.Errorf("registry on %s not ready: %w\n--- %s (tail) ---\n%s", r.addr, err, r.logPath, proc.LogTail(r.logPath, 30))
	}
	return nil
}

// ping succeeds when /v2/ answers 200 or 401 (auth required).
func (r *Registry) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL()+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := r.HTTPClient().Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("GET /v2/: %s", resp.Status)
	}
	return nil
}

// Stop stops the registry and waits until its port is closed. Storage stays,
// so Restart brings the same content back on the same address.
func (r *Registry) Stop() error {
	if r.proc == nil {
		return nil
	}
	if err := r.proc.Stop(10 * time.Second); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(r.dir, "registry.pid"))
	return proc.WaitPortClosed(r.addr, 10*time.Second)
}

// Restart starts the registry again (after Stop, or stops it first) on the
// same address with the same storage, TLS material and users.
func (r *Registry) Restart(ctx context.Context) error {
	if r.Running() {
		if err := r.Stop(); err != nil {
			return err
		}
	}
	return r.start(ctx)
}

// Running reports whether the registry process is alive.
func (r *Registry) Running() bool { return r.proc != nil && !r.proc.Exited() }

// Pid is the registry's process id (0 if never started here or attached).
func (r *Registry) Pid() int {
	if r.proc == nil {
		return 0
	}
	return r.proc.Pid()
}

// Addr is "HOST:PORT" ("127.0.0.1:PORT" by default); it is also the
// registry host in image references.
func (r *Registry) Addr() string { return r.addr }

// URL is "http://127.0.0.1:PORT" or "https://…" with TLS.
func (r *Registry) URL() string {
	if r.opts.TLS {
		return "https://" + r.addr
	}
	return "http://" + r.addr
}

// TLS reports whether the registry serves HTTPS.
func (r *Registry) TLS() bool { return r.opts.TLS }

// CAFile is the PEM file of the CA that signed the server certificate ("" without TLS).
func (r *Registry) CAFile() string { return r.caFile }

// CertPool trusts the registry's CA (nil without TLS).
func (r *Registry) CertPool() *x509.CertPool { return r.caPool }

// Dir is the registry's directory; LogFile its log.
func (r *Registry) Dir() string     { return r.dir }
func (r *Registry) LogFile() string { return r.logPath }

// Ref returns "ADDR/repo:tag" (or "ADDR/repo@digest" when tag starts with "sha256:").
func (r *Registry) Ref(repo, tag string) string {
	if strings.HasPrefix(tag, "sha256:") {
		return r.addr + "/" + repo + "@" + tag
	}
	return r.addr + "/" + repo + ":" + tag
}

// Credentials are the ones image helpers use by default: the first htpasswd
// user by name. ok is false without htpasswd users (or after Attach).
func (r *Registry) Credentials() (user, pass string, ok bool) {
	return r.user, r.pass, r.user != ""
}

// HTTPClient talks to the registry (it trusts the registry's CA; no
// keep-alives, so a Stop/Restart never leaves it a dead connection).
func (r *Registry) HTTPClient() *http.Client {
	return &http.Client{Transport: r.transport, Timeout: 30 * time.Second}
}

// Transport is an http.RoundTripper for go-containerregistry: it trusts the
// CA and, with TLS, turns the plain-HTTP requests go-containerregistry makes
// to loopback registries into HTTPS ones.
func (r *Registry) Transport() http.RoundTripper {
	if r.opts.TLS {
		return &httpsForHost{host: r.addr, base: r.transport}
	}
	return r.transport
}

// HostsTOML is a containerd certs.d hosts.toml for this registry (write it
// at certs.d/ADDR/hosts.toml): the registry as a [host] entry (containerd
// 1.6 refuses a file without one) and as the server, each with its CA.
// Without the CA on the server entry, a tag the registry lacks falls
// through from the [host] entry to the server entry, whose x509 error is
// what containerd 1.x reports (docs/node-path.md).
func (r *Registry) HostsTOML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "server = %q\n", r.URL())
	if r.caFile != "" {
		fmt.Fprintf(&b, "ca = %q\n", r.caFile)
	}
	fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", r.URL())
	if r.caFile != "" {
		fmt.Fprintf(&b, "  ca = %q\n", r.caFile)
	}
	return b.String()
}

func (r *Registry) initTransport() {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableKeepAlives = true
	t.Proxy = nil // loopback only, never through a proxy
	if r.caPool != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: r.caPool, MinVersion: tls.VersionTLS12}
	}
	r.transport = t
}

type httpsForHost struct {
	host string
	base http.RoundTripper
}

func (t *httpsForHost) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && req.URL.Host == t.host {
		req = req.Clone(req.Context())
		req.URL.Scheme = "https"
	}
	return t.base.RoundTrip(req)
}

func (r *Registry) writeHtpasswd() error {
	users := make([]string, 0, len(r.opts.Htpasswd))
	for u := range r.opts.Htpasswd {
		if u == "" || strings.Contains(u, ":") {
			return fmt.Errorf("registry: bad htpasswd user %q", u)
		}
		users = append(users, u)
	}
	sort.Strings(users)
	var b strings.Builder
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(r.opts.Htpasswd[u]), bcrypt.MinCost)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	r.user, r.pass = users[0], r.opts.Htpasswd[users[0]]
	return os.WriteFile(filepath.Join(r.dir, "htpasswd"), []byte(b.String()), 0o600)
}

func (r *Registry) writeConfig() error {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) } // JSON strings are YAML strings
	var b strings.Builder
	fmt.Fprintf(&b, "# written by pullwatch e2e harness\nversion: 0.1\n")
	fmt.Fprintf(&b, "log:\n  level: info\n  formatter: text\n  fields:\n    service: registry\n")
	fmt.Fprintf(&b, "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n", q(filepath.Join(r.dir, "data")))
	fmt.Fprintf(&b, "  maintenance:\n    uploadpurging:\n      enabled: false\n")
	fmt.Fprintf(&b, "http:\n  addr: %s\n  secret: %s\n  headers:\n    X-Content-Type-Options: [nosniff]\n", q(r.addr), q(hex.EncodeToString(secret)))
	if r.opts.TLS {
		fmt.Fprintf(&b, "  tls:\n    certificate: %s\n    key: %s\n", q(filepath.Join(r.dir, "server.crt")), q(filepath.Join(r.dir, "server.key")))
	}
	switch {
	case len(r.opts.Htpasswd) > 0:
		fmt.Fprintf(&b, "auth:\n  htpasswd:\n    realm: pullwatch-e2e\n    path: %s\n", q(filepath.Join(r.dir, "htpasswd")))
	case r.opts.Token != nil:
		t := r.opts.Token
		fmt.Fprintf(&b, "auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n", q(t.Realm), q(t.Service), q(t.Issuer), q(t.RootCertBundle))
	}
	return os.WriteFile(r.configPath, []byte(b.String()), 0o644)
}

func (r *Registry) writeState() error {
	st := state{Addr: r.addr, TLS: r.opts.TLS, CAFile: r.caFile, Binary: r.opts.Binary, Netns: r.opts.Netns}
	for u := range r.opts.Htpasswd {
		st.Users = append(st.Users, u)
	}
	sort.Strings(st.Users)
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(r.dir, "registry.json"), b, 0o644)
}
