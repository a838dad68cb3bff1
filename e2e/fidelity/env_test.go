package fidelity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/certs"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
	"github.com/pullwatch/pullwatch/e2e/harness/registryfront"
	"github.com/pullwatch/pullwatch/e2e/harness/runtimes"
	"github.com/pullwatch/pullwatch/e2e/harness/tokenserver"
)

// The node paths the runtime and the agent read, each a directory of the
// case's own (bind-mounted for the runtime, --host-root for the agent).
var nodeDirs = []string{"/etc/containerd", "/etc/docker", "/var/lib/rancher"}

// Where the CA files are on the node.
const (
	nodeCA      = "/etc/containerd/fidelity/ca.crt"
	nodeOtherCA = "/etc/containerd/fidelity/other-ca.crt"
	// The client certificate fMTLS wants, and its key.
	nodeClientCert = "/etc/containerd/fidelity/client.crt"
	nodeClientKey  = "/etc/containerd/fidelity/client.key"
)

// The header fGate wants (hosts.toml [header], registry.headers).
const (
	gateHeader = "X-Fidelity-Gate"
	gateValue  = "open"
)

// The registry the fronts share the credentials of.
const (
	regUser = "fidelity"
	regPass = "fidelity-secret-1"
)

// The fronts: each a registry host the node sees.
const (
	fUp      = "up"       // TLS, the upstream
	fMirror  = "mirror"   // TLS, a mirror with app only
	fAuth    = "auth"     // TLS, htpasswd
	fPlain   = "plain"    // plain HTTP, the upstream's content
	fLo      = "lo"       // TLS on the node's loopback
	fLoPlain = "lo-plain" // plain HTTP on the node's loopback (kind-style)
	fMTLS    = "mtls"     // TLS wanting a client certificate of the CA
	fGate    = "gate"     // TLS, 403 DENIED without gateHeader
	// fToken is TLS with bearer-token auth, on the node's loopback (a
	// kind-style local registry with its token server beside it: the agent
	// fetches a loopback realm only for a registry there, and sends
	// credentials over plain HTTP only on the loopback).
	fToken = "token"
)

// The images (repository:tag) behind the fronts.
const (
	imApp     = "fid/app:v1"      // everywhere
	imGone    = "fid/gone:v1"     // deleted from the upstream after the node cached it
	imUpOnly  = "fid/uponly:v1"   // on the upstream, not on the mirror
	imPrivate = "fid/private:v1"  // behind auth
	imOther   = "fid/other:v1"    // on the upstream and the mirror (second image)
	imDigest  = "fid/digested:v1" // on the upstream
	imToken   = "fid/token:v1"    // behind bearer-token auth
)

// shared is what every runtime's node uses: the registries, the CA, the
// binaries, the network.
type shared struct {
	dir      string
	network  *netns.Network
	caPEM    []byte
	otherPEM []byte
	// clientPEM and clientKeyPEM are fMTLS's client certificate.
	clientPEM, clientKeyPEM []byte
	tls                     *tls.Config
	agentBin                string
	crictl                  string
	digests                 map[string]string  // image → manifest digest
	upstream                *registry.Registry // behind fUp, fPlain, fLo, fLoPlain
	backends                map[string]*registry.Registry
	// tokens is the token server of the bearer-auth registry (behind
	// fToken), on this machine's 127.0.0.1; each node reaches its realm
	// (http://localhost:<port>/token) through a front on its own loopback
	// at the same port.
	tokens *tokenserver.Server
}

// env is one runtime's node: a network namespace of its own with its own
// fronts, so the runtimes' matrices run side by side.
type env struct {
	*shared
	ns     *netns.Namespace
	fronts map[string]*registryfront.Front
}

// deleteGone deletes imGone from the upstream registry.
func (e *shared) deleteGone(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	repo, _, _ := strings.Cut(imGone, ":")
	if err := registry.DeleteManifest(ctx, e.upstream, repo, e.digests[imGone]); err != nil {
		t.Fatal(err)
	}
}

// ref is image at front.
func (e *env) ref(front, image string) string { return e.fronts[front].Addr() + "/" + image }

// host is front's host:port.
func (e *env) host(front string) string { return e.fronts[front].Addr() }

// url is front's base URL.
func (e *env) url(front string) string { return e.fronts[front].URL() }

// setModes puts every front in its mode (Pass unless listed).
func (e *env) setModes(t testing.TB, modes map[string]registryfront.Mode) {
	t.Helper()
	for name, f := range e.fronts {
		m, ok := modes[name]
		if !ok {
			m = registryfront.Pass
		}
		if err := f.Set(m); err != nil {
			t.Fatalf("front %s to %s: %v", name, m, err)
		}
	}
}

func newShared(t *testing.T) *shared {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := &shared{dir: t.TempDir(), digests: map[string]string{}, backends: map[string]*registry.Registry{}}
	var err error
	if e.crictl, err = runtimes.Crictl(); err != nil {
		t.Fatal(err)
	}
	bin, err := checkout.Binaries(ctx, "", filepath.Join(e.dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	e.agentBin = filepath.Join(bin, checkout.AgentBinary)

	if e.network, err = netns.Create(ctx, netns.Options{Prefix: "pwf"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if err := e.network.Delete(dctx); err != nil {
			t.Errorf("delete network: %v", err)
		}
	})

	// The registries: real docker-registry on this machine's loopback,
	// reached by the nodes only through their fronts.
	start := func(name string, opts registry.Options) *registry.Registry {
		r, err := registry.Start(ctx, filepath.Join(e.dir, "registry-"+name), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Stop() })
		e.backends[name] = r
		return r
	}
	open := start("open", registry.Options{})
	e.upstream = open
	mirror := start("mirror", registry.Options{})
	auth := start("auth", registry.Options{Htpasswd: map[string]string{regUser: regPass}})
	// Bearer-token auth as Docker Hub does it for a private repository:
	// an anonymous token grants nothing, the user's grants pull.
	if e.tokens, err = tokenserver.Start(filepath.Join(e.dir, "tokens"), tokenserver.Options{
		Users: map[string]string{regUser: regPass}, Anonymous: tokenserver.AnonymousNoAccess,
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.tokens.Close)
	token := start("token", registry.Options{Token: e.tokens.TokenAuth()})
	push := func(r *registry.Registry, image string) {
		repo, tag, _ := strings.Cut(image, ":")
		d, err := registry.PushImage(ctx, r, repo, tag, registry.ImageOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if prev, ok := e.digests[image]; ok && prev != d {
			t.Fatalf("%s: digest %s here, %s elsewhere", image, d, prev)
		}
		e.digests[image] = d
	}
	for _, im := range []string{imApp, imGone, imUpOnly, imOther, imDigest} {
		push(open, im)
	}
	push(mirror, imApp)
	push(mirror, imOther)
	push(auth, imPrivate)
	repo, tag, _ := strings.Cut(imToken, ":")
	d, err := registry.PushImage(ctx, token, repo, tag, registry.ImageOptions{Username: regUser, Password: regPass})
	if err != nil {
		t.Fatal(err)
	}
	e.digests[imToken] = d

	// One CA signs every front's certificate (for every node address);
	// another signs nothing the nodes meet (the wrong-CA cases).
	ca, caKey, err := certs.CA("pullwatch fidelity CA")
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := certs.CA("pullwatch fidelity other CA")
	if err != nil {
		t.Fatal(err)
	}
	e.caPEM, e.otherPEM = certs.PEM("CERTIFICATE", ca.Raw), certs.PEM("CERTIFICATE", other.Raw)
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	subnet := e.network.Subnet()
	for i := 1; i < 255; i++ {
		ip := make(net.IP, 4)
		copy(ip, subnet.IP.To4())
		ip[3] = byte(i)
		ips = append(ips, ip)
	}
	der, key, err := certs.Issue(&x509.Certificate{
		IPAddresses: ips,
		DNSNames:    []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	e.tls = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
	cder, ckey, err := certs.Issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "fidelity node"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ckeyDER, err := x509.MarshalECPrivateKey(ckey)
	if err != nil {
		t.Fatal(err)
	}
	e.clientPEM, e.clientKeyPEM = certs.PEM("CERTIFICATE", cder), certs.PEM("EC PRIVATE KEY", ckeyDER)
	return e
}

// mtlsConfig is the fronts' TLS wanting a client certificate of the CA.
func (s *shared) mtlsConfig() *tls.Config {
	c := s.tls.Clone()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.caPEM)
	c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	return c
}

// node makes a runtime's node: a namespace and its fronts.
func (s *shared) node(t *testing.T, name string) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := &env{shared: s, fronts: map[string]*registryfront.Front{}}
	var err error
	if e.ns, err = s.network.AddNamespace(ctx, name); err != nil {
		t.Fatal(err)
	}
	nodeIP := e.ns.IP()
	for _, f := range []struct {
		name, host, backend string
		tls                 *tls.Config
		header              string
	}{
		{fUp, nodeIP.String(), "open", s.tls, ""},
		{fMirror, nodeIP.String(), "mirror", s.tls, ""},
		{fAuth, nodeIP.String(), "auth", s.tls, ""},
		{fPlain, nodeIP.String(), "open", nil, ""},
		{fLo, "127.0.0.1", "open", s.tls, ""},
		{fLoPlain, "127.0.0.1", "open", nil, ""},
		{fMTLS, nodeIP.String(), "open", s.mtlsConfig(), ""},
		{fGate, nodeIP.String(), "open", s.tls, gateHeader + ": " + gateValue},
		{fToken, "127.0.0.1", "token", s.tls, ""},
	} {
		opts := registryfront.Options{Listen: e.ns.Listen, Addr: net.JoinHostPort(f.host, "0"), Backend: s.backends[f.backend].URL(), TLS: f.tls, RequireHeader: f.header}
		fr, err := registryfront.Start(opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = fr.Close() })
		e.fronts[f.name] = fr
	}
	// The token realm on the node's own loopback, at the port it has here.
	realm, err := registryfront.Start(registryfront.Options{Listen: e.ns.Listen, Addr: s.tokens.Addr(), Backend: "http://" + s.tokens.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = realm.Close() })
	t.Logf("%s: node %s; fronts: %s; token realm %s", name, nodeIP, e.describeFronts(), s.tokens.Realm())
	return e
}

func (e *env) describeFronts() string {
	names := make([]string, 0, len(e.fronts))
	for n := range e.fronts {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, n+"="+e.fronts[n].URL())
	}
	return strings.Join(parts, " ")
}

// seedFiles is a node configuration every front works with: each front's
// hosts.toml with the CA.
func (e *env) seedHosts() map[string]string {
	files := map[string]string{}
	for name := range e.fronts {
		files["/etc/containerd/certs.d/"+e.host(name)+"/hosts.toml"] = e.hostsTOML(name, nodeCA)
	}
	files["/etc/containerd/certs.d/"+e.host(fMTLS)+"/hosts.toml"] = e.hostsTOML(fMTLS, nodeCA) + clientTOML
	files["/etc/containerd/certs.d/"+e.host(fGate)+"/hosts.toml"] = e.hostsTOML(fGate, nodeCA) + e.headerTOML(fGate)
	return files
}

// clientTOML is the [host] table's client certificate line (after
// hostsTOML).
var clientTOML = fmt.Sprintf("  client = [[%q, %q]]\n", nodeClientCert, nodeClientKey)

// headerTOML is the [host] table's header table with fGate's header
// (after hostsTOML).
func (e *env) headerTOML(front string) string {
	return fmt.Sprintf("\n[host.%q.header]\n  %s = %q\n", e.url(front), gateHeader, gateValue)
}

// hostsTOML is a hosts.toml for front with a [host] table (ca when TLS).
func (e *env) hostsTOML(front, ca string) string {
	u := e.url(front)
	s := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", u, u)
	if strings.HasPrefix(u, "https://") && ca != "" {
		s += fmt.Sprintf("  ca = %q\n", ca)
	}
	return s
}

// dockerConfig is a kubelet keyring (config.json) with user:pass for host.
func dockerConfig(host, user, pass string) string {
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass)),
	}}})
	return string(b)
}

// writeRoot lays out a node root under dir: the CA files, resolv.conf and
// files (node path → content).
func (e *env) writeRoot(dir string, files map[string]string) error {
	all := map[string]string{
		nodeCA:             string(e.caPEM),
		nodeOtherCA:        string(e.otherPEM),
		nodeClientCert:     string(e.clientPEM),
		nodeClientKey:      string(e.clientKeyPEM),
		"/etc/resolv.conf": "nameserver 127.0.0.1\n",
	}
	for p, c := range files {
		all[p] = c
	}
	for _, d := range nodeDirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	for p, c := range all {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			return err
		}
	}
	return nil
}
