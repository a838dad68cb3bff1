// Package kubeapi runs a real Kubernetes control plane for end-to-end tests:
// etcd 3.5 and kube-apiserver 1.34, both on 127.0.0.1 free ports, built from
// the pinned modules under hack/kube/ by scripts/build-kube.sh.
//
// No controller-manager, scheduler or kubelet runs: objects (Nodes, Pods
// bound to a node through spec.nodeName, Secrets, RBAC) are real API
// objects that nothing reconciles. Authentication is real: a static token
// file (the admin user in system:masters plus Options.Users), client
// certificates signed by the cluster CA, and ServiceAccount tokens minted
// through the TokenRequest API. Authorization is RBAC (Options can add Node).
package kubeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// Binary names in the bin directory.
const (
	EtcdBinary      = "etcd"
	APIServerBinary = "kube-apiserver"
)

// Fixed names and ranges of the cluster.
const (
	// AdminUser is the user of Kubeconfig/RESTConfig/Client, in system:masters.
	AdminUser = "pullwatch-admin"
	// ServiceAccountIssuer is --service-account-issuer (also the default
	// audience of ServiceAccount tokens).
	ServiceAccountIssuer = "https://kubernetes.default.svc"
	// ServiceClusterIPRange is --service-cluster-ip-range (configuration
	// only: nothing routes it).
	ServiceClusterIPRange = "10.96.0.0/16"
)

// ErrNoBinaries is wrapped by the error Start and LocateBinaries return when
// etcd or kube-apiserver has not been built.
var ErrNoBinaries = errors.New("kube binaries not built")

// Options configure Start.
type Options struct {
	// BinDir holds etcd and kube-apiserver. Default: $PULLWATCH_KUBE_BIN,
	// else <repo>/.cache/kube/bin (what scripts/build-kube.sh fills).
	BinDir string
	// Users are extra static-token users (name → groups), written to the
	// --token-auth-file (which the API server reads only at start).
	// KubeconfigFor and ClientFor authenticate them by token.
	Users map[string][]string
	// AuthorizationMode is --authorization-mode; default "RBAC". Use
	// "Node,RBAC" to have the Node authorizer judge system:node:<name> users.
	AuthorizationMode string
	// APIServerArgs are appended to kube-apiserver's flags (a repeated
	// flag's last value wins).
	APIServerArgs []string
	// EtcdArgs are appended to etcd's flags.
	EtcdArgs []string
	// ReadyTimeout bounds the wait for kube-apiserver's /readyz; default 60s.
	ReadyTimeout time.Duration
	// ServingIPs are more addresses the serving certificate is valid for,
	// e.g. the box bridge's address that kubelets in network namespaces
	// use (with --bind-address and --advertise-address in APIServerArgs).
	ServingIPs []net.IP
	// FullCluster says a kube-controller-manager and kube-proxy run (the
	// cluster in a box with kubelets): the ServiceAccount admission plugin
	// stays on (the controller manager creates the default ServiceAccounts
	// and pods get their token volumes) and this server is published as
	// the kubernetes Service's endpoint (--endpoint-reconciler-type=lease).
	// Otherwise nothing would create the default ServiceAccount, so the
	// plugin is off, and nothing routes the Service, so it has no endpoint.
	FullCluster bool
}

// KubeletClientUser is the identity kube-apiserver presents to kubelets
// (logs, exec, port-forward): a client certificate of the cluster CA in
// system:masters, so a kubelet's webhook authorizer admits it.
const KubeletClientUser = "kube-apiserver-kubelet-client"

// Binaries are the executables Start runs.
type Binaries struct {
	Etcd, APIServer string
}

// LocateBinaries finds etcd and kube-apiserver in binDir, or (binDir empty)
// in $PULLWATCH_KUBE_BIN or <repo>/.cache/kube/bin. The error wraps
// ErrNoBinaries when either is missing and says how to build them.
func LocateBinaries(binDir string) (Binaries, error) {
	if binDir == "" {
		binDir = os.Getenv("PULLWATCH_KUBE_BIN")
	}
	if binDir == "" {
		root, err := checkout.Root()
		if err != nil {
			return Binaries{}, fmt.Errorf("%w: %v; set PULLWATCH_KUBE_BIN or Options.BinDir", ErrNoBinaries, err)
		}
		binDir = filepath.Join(root, ".cache", "kube", "bin")
	}
	b := Binaries{Etcd: filepath.Join(binDir, EtcdBinary), APIServer: filepath.Join(binDir, APIServerBinary)}
	var missing []string
	for _, p := range []string{b.Etcd, b.APIServer} {
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return b, fmt.Errorf("%w: %s missing: run scripts/build-kube.sh (a cold build takes a few minutes)",
			ErrNoBinaries, strings.Join(missing, ", "))
	}
	return b, nil
}

// Cluster is a running etcd + kube-apiserver pair.
type Cluster struct {
	dir      string
	opts     Options
	bins     Binaries
	pki      *pki
	caFile   string
	saKey    string
	tokens   map[string]string   // user → static token
	groups   map[string][]string // user → groups of static-token users
	etcdURL  string              // http://127.0.0.1:port (client URL)
	peerPort int
	url      string // https://127.0.0.1:port
	etcd     *proc.Process
	apiser   *proc.Process

	kubeconfig string
	restConfig *rest.Config
	client     kubernetes.Interface

	mu       sync.Mutex
	stopped  bool
	stopErr  error
	kcSerial int
}

// Start runs etcd (data in dir/etcd-data, log dir/etcd.log) and then
// kube-apiserver (log dir/kube-apiserver.log) until /readyz answers 200, and
// writes dir/kubeconfig for the admin user. The processes run until Stop,
// whatever becomes of ctx (ctx bounds only the start). dir must exist or be
// creatable; its path ends up on both command lines, so a test can look for
// leftovers with proc.Find(dir).
func Start(ctx context.Context, dir string, opts Options) (*Cluster, error) {
	bins, err := LocateBinaries(opts.BinDir)
	if err != nil {
		return nil, err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if opts.AuthorizationMode == "" {
		opts.AuthorizationMode = "RBAC"
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 60 * time.Second
	}
	c := &Cluster{
		dir:    dir,
		opts:   opts,
		bins:   bins,
		caFile: filepath.Join(dir, "ca.crt"),
		saKey:  filepath.Join(dir, "sa.key"),
		tokens: map[string]string{},
		groups: map[string][]string{},
	}
	if err := c.writeFiles(); err != nil {
		return nil, err
	}
	if err := c.startEtcd(ctx); err != nil {
		return nil, err
	}
	if err := c.startAPIServer(ctx); err != nil {
		_ = c.etcd.Stop(10 * time.Second)
		return nil, err
	}
	c.restConfig = c.tokenConfig(c.tokens[AdminUser])
	c.client, err = kubernetes.NewForConfig(c.restConfig)
	if err == nil {
		c.kubeconfig = filepath.Join(dir, "kubeconfig")
		err = c.writeKubeconfig(c.kubeconfig, AdminUser, c.tokens[AdminUser], nil, nil)
	}
	if err != nil {
		_ = c.Stop()
		return nil, err
	}
	return c, nil
}

// writeFiles generates the PKI, the ServiceAccount key and the token file.
func (c *Cluster) writeFiles() error {
	p, err := newPKI()
	if err != nil {
		return err
	}
	c.pki = p
	certPEM, keyPEM, err := p.serving(c.opts.ServingIPs)
	if err != nil {
		return err
	}
	kcCertPEM, kcKeyPEM, err := p.client(KubeletClientUser, []string{"system:masters"})
	if err != nil {
		return err
	}
	saPEM, err := serviceAccountKey()
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"ca.crt", p.caPEM, 0o644},
		{"apiserver.crt", certPEM, 0o644},
		{"apiserver.key", keyPEM, 0o600},
		{"sa.key", saPEM, 0o600},
		{"kubelet-client.crt", kcCertPEM, 0o644},
		{"kubelet-client.key", kcKeyPEM, 0o600},
	} {
		if err := writeFile(filepath.Join(c.dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}

	// --token-auth-file: CSV "token,user,uid,\"group1,group2\"".
	users := map[string][]string{AdminUser: {"system:masters"}}
	for u, g := range c.opts.Users {
		if u == AdminUser {
			return fmt.Errorf("kubeapi: Options.Users: %q is the built-in admin user", u)
		}
		if u == "" || strings.HasPrefix(u, "system:serviceaccount:") {
			return fmt.Errorf("kubeapi: Options.Users: bad user name %q", u)
		}
		users[u] = slices.Clone(g)
	}
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Strings(names)
	var sb strings.Builder
	w := csv.NewWriter(&sb)
	for _, u := range names {
		tok, err := randomToken()
		if err != nil {
			return err
		}
		c.tokens[u], c.groups[u] = tok, users[u]
		rec := []string{tok, u, "uid-" + u}
		if len(users[u]) > 0 {
			rec = append(rec, strings.Join(users[u], ","))
		}
		if err := w.Write(rec); err != nil {
			return err
		}
	}
	w.Flush()
	return writeFile(filepath.Join(c.dir, "tokens.csv"), []byte(sb.String()), 0o600)
}

// startEtcd starts etcd on two free ports, retrying with new ones when a
// port picked here was taken before etcd bound it.
func (c *Cluster) startEtcd(ctx context.Context) error {
	logFile := filepath.Join(c.dir, "etcd.log")
	return proc.StartOnFreePort(0, logFile, func(clientPort int) error {
		peerPort, err := proc.FreePort()
		if err != nil {
			return err
		}
		if peerPort == clientPort {
			return proc.ErrPortInUse
		}
		c.etcdURL = "http://127.0.0.1:" + strconv.Itoa(clientPort)
		c.peerPort = peerPort
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
		args := []string{
			"--name=pullwatch",
			"--data-dir=" + filepath.Join(c.dir, "etcd-data"),
			"--listen-client-urls=" + c.etcdURL,
			"--advertise-client-urls=" + c.etcdURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=pullwatch=" + peerURL,
			"--initial-cluster-state=new",
			// Test data: no fsync (much faster on slow disks), small backend.
			"--unsafe-no-fsync",
			"--quota-backend-bytes=" + strconv.Itoa(1<<30),
			"--log-level=warn",
		}
		args = append(args, c.opts.EtcdArgs...)
		p, err := proc.Start(proc.Spec{Name: "etcd", Path: c.bins.Etcd, Args: args, Dir: c.dir, LogFile: logFile})
		if err != nil {
			return fmt.Errorf("kubeapi: %w", err)
		}
		c.etcd = p
		if err := c.waitReady(ctx, p, 30*time.Second, c.etcdURL+"/health", nil); err != nil {
			_ = p.Stop(5 * time.Second)
			return fmt.Errorf("kubeapi: etcd did not become healthy: %w\netcd.log (tail):\n%s", err, p.LogTail(30))
		}
		return nil
	})
}

// startAPIServer starts kube-apiserver on a free port (retrying like
// startEtcd) and waits for /readyz.
func (c *Cluster) startAPIServer(ctx context.Context) error {
	logFile := filepath.Join(c.dir, "kube-apiserver.log")
	disabled, reconciler := "ServiceAccount", "none"
	if c.opts.FullCluster {
		disabled, reconciler = "", "lease"
	}
	return proc.StartOnFreePort(0, logFile, func(port int) error {
		if port == c.peerPort || "http://127.0.0.1:"+strconv.Itoa(port) == c.etcdURL {
			return proc.ErrPortInUse
		}
		c.url = "https://127.0.0.1:" + strconv.Itoa(port)
		args := []string{
			"--etcd-servers=" + c.etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--cert-dir=" + filepath.Join(c.dir, "apiserver-certs"),
			"--tls-cert-file=" + filepath.Join(c.dir, "apiserver.crt"),
			"--tls-private-key-file=" + filepath.Join(c.dir, "apiserver.key"),
			"--client-ca-file=" + c.caFile,
			"--token-auth-file=" + filepath.Join(c.dir, "tokens.csv"),
			"--authorization-mode=" + c.opts.AuthorizationMode,
			"--service-account-issuer=" + ServiceAccountIssuer,
			"--service-account-key-file=" + c.saKey,
			"--service-account-signing-key-file=" + c.saKey,
			"--disable-admission-plugins=" + disabled,
			"--endpoint-reconciler-type=" + reconciler,
			"--service-cluster-ip-range=" + ServiceClusterIPRange,
			"--allow-privileged=true",
			"--kubelet-client-certificate=" + filepath.Join(c.dir, "kubelet-client.crt"),
			"--kubelet-client-key=" + filepath.Join(c.dir, "kubelet-client.key"),
			"--kubelet-preferred-address-types=InternalIP,Hostname",
			"--profiling=false",
			"--v=1",
		}
		args = append(args, c.opts.APIServerArgs...)
		p, err := proc.Start(proc.Spec{Name: "kube-apiserver", Path: c.bins.APIServer, Args: args, Dir: c.dir, LogFile: logFile})
		if err != nil {
			return fmt.Errorf("kubeapi: %w", err)
		}
		c.apiser = p
		hdr := http.Header{"Authorization": {"Bearer " + c.tokens[AdminUser]}}
		if err := c.waitReady(ctx, p, c.opts.ReadyTimeout, c.url+"/readyz", hdr); err != nil {
			_ = p.Stop(10 * time.Second)
			return fmt.Errorf("kubeapi: kube-apiserver not ready: %w\nkube-apiserver.log (tail):\n%s\netcd.log (tail):\n%s",
				err, p.LogTail(40), c.etcd.LogTail(10))
		}
		return nil
	})
}

// waitReady polls url until it answers 200, the process exits, or timeout.
func (c *Cluster) waitReady(ctx context.Context, p *proc.Process, timeout time.Duration, url string, hdr http.Header) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.pki.caPEM)
	hc := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true},
	}
	return proc.Poll(ctx, timeout, 100*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("%s exited (%v): %w", p.Name(), p.ExitErr(), proc.ErrStop)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	})
}

// Dir is the directory Start was given (absolute).
func (c *Cluster) Dir() string { return c.dir }

// URL is the API server's address, https://127.0.0.1:<port>.
func (c *Cluster) URL() string { return c.url }

// EtcdURL is etcd's client URL, http://127.0.0.1:<port>.
func (c *Cluster) EtcdURL() string { return c.etcdURL }

// CAFile is the PEM file of the CA that signed the serving certificate (and
// the client certificates of KubeconfigFor).
func (c *Cluster) CAFile() string { return c.caFile }

// SAKeyFile is the PEM RSA key that signs ServiceAccount tokens (what
// kube-controller-manager's --service-account-private-key-file takes).
func (c *Cluster) SAKeyFile() string { return c.saKey }

// CAData is CAFile's content.
func (c *Cluster) CAData() []byte { return slices.Clone(c.pki.caPEM) }

// Kubeconfig is the path of a kubeconfig for the admin user (static token,
// group system:masters) that trusts the cluster CA.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// AdminToken is the admin user's bearer token.
func (c *Cluster) AdminToken() string { return c.tokens[AdminUser] }

// RESTConfig returns a copy of the admin user's client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// Client is a clientset for the admin user.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// Token returns the static token of an Options.Users user (or AdminUser).
func (c *Cluster) Token(user string) (string, bool) {
	t, ok := c.tokens[user]
	return t, ok
}

// APIServerPid and EtcdPid are the processes' ids (their process groups).
func (c *Cluster) APIServerPid() int { return c.apiser.Pid() }

// EtcdPid is etcd's process id.
func (c *Cluster) EtcdPid() int { return c.etcd.Pid() }

// tokenConfig is a rest.Config for a bearer token.
func (c *Cluster) tokenConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            c.url,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: slices.Clone(c.pki.caPEM)},
		QPS:             100,
		Burst:           200,
		Timeout:         30 * time.Second,
	}
}

// RESTConfigFor returns a client configuration for user in groups. A user
// of Options.Users (or AdminUser) authenticates with its static token, and
// groups must be nil or equal its configured groups (the token file is read
// once, at start). Any other user gets a fresh client certificate from the
// cluster CA (CN=user, O=groups), so identities such as
// "system:node:<name>" in "system:nodes" need no restart.
func (c *Cluster) RESTConfigFor(user string, groups []string) (*rest.Config, error) {
	if user == "" {
		return nil, errors.New("kubeapi: empty user name")
	}
	if tok, ok := c.tokens[user]; ok {
		if groups != nil && !sameSet(groups, c.groups[user]) {
			return nil, fmt.Errorf("kubeapi: token user %q has groups %v (fixed at start), not %v", user, c.groups[user], groups)
		}
		return c.tokenConfig(tok), nil
	}
	certPEM, keyPEM, err := c.pki.client(user, groups)
	if err != nil {
		return nil, err
	}
	cfg := c.tokenConfig("")
	cfg.CertData, cfg.KeyData = certPEM, keyPEM
	return cfg, nil
}

// ClientFor is a clientset for RESTConfigFor(user, groups).
func (c *Cluster) ClientFor(user string, groups []string) (kubernetes.Interface, error) {
	cfg, err := c.RESTConfigFor(user, groups)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// KubeconfigFor writes a kubeconfig for RESTConfigFor(user, groups) under
// Dir and returns its path: a static-token user's token, or else a client
// certificate embedded in the file.
func (c *Cluster) KubeconfigFor(user string, groups []string) (string, error) {
	cfg, err := c.RESTConfigFor(user, groups)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.kcSerial++
	n := c.kcSerial
	c.mu.Unlock()
	path := filepath.Join(c.dir, "kubeconfigs", fmt.Sprintf("%03d-%s.kubeconfig", n, safeName(user)))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	if err := c.writeKubeconfig(path, user, cfg.BearerToken, cfg.CertData, cfg.KeyData); err != nil {
		return "", err
	}
	return path, nil
}

func (c *Cluster) writeKubeconfig(path, user, token string, certPEM, keyPEM []byte) error {
	const name = "pullwatch-e2e"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: c.url, CertificateAuthorityData: slices.Clone(c.pki.caPEM)}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token, ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = name
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("kubeapi: write kubeconfig: %w", err)
	}
	return os.Chmod(path, 0o600)
}

// Stop stops kube-apiserver, then etcd (SIGTERM, then SIGKILL after a
// grace period), and waits until their ports no longer accept connections.
// It is safe to call more than once; later calls return the first result.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return c.stopErr
	}
	c.stopped = true
	var errs []error
	if c.apiser != nil {
		if err := c.apiser.Stop(15 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if c.etcd != nil {
		if err := c.etcd.Stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, u := range []string{c.url, c.etcdURL, "http://127.0.0.1:" + strconv.Itoa(c.peerPort)} {
		addr := strings.TrimPrefix(strings.TrimPrefix(u, "https://"), "http://")
		if addr == "" || strings.HasSuffix(addr, ":0") {
			continue
		}
		if err := proc.WaitPortClosed(addr, 10*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("kubeapi: %w", err))
		}
	}
	c.stopErr = errors.Join(errs...)
	return c.stopErr
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	sort.Strings(a)
	sort.Strings(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			return r
		}
		return '_'
	}, s)
}
