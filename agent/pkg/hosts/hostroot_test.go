package hosts

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
)

// TestContainerdUnderHostRoot: with a host root, config.toml's imports
// and hosts.toml's ca and client files are the node's paths: absolute
// paths that exist only under the root are read from under the root.
func TestContainerdUnderHostRoot(t *testing.T) {
	root := t.TempDir()
	node := func(p string) string { return filepath.Join(root, p) }
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	keyDER, err := x509.MarshalPKCS8PrivateKey(srv.TLS.Certificates[0].PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})

	writeFile(t, node("/etc/containerd/config.toml"), `version = 2
imports = ["/etc/containerd/conf.d/*.toml"]
`)
	writeFile(t, node("/etc/containerd/conf.d/10-registry.toml"), `version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
`)
	writeFile(t, node("/etc/pki/registry/ca.pem"), string(caPEM))
	writeFile(t, node("/etc/pki/registry/client.pem"), string(caPEM))
	writeFile(t, node("/etc/pki/registry/client.key"), string(keyPEM))
	writeFile(t, node("/etc/containerd/certs.d/tls.example:5443/extra-ca.pem"), string(caPEM))
	hostsTOML := `server = "https://tls.example:5443"
ca = "/etc/pki/registry/ca.pem"

[host."https://mirror.example"]
  capabilities = ["pull", "resolve"]
  ca = ["extra-ca.pem", "/etc/pki/registry/ca.pem"]
  client = [["/etc/pki/registry/client.pem", "/etc/pki/registry/client.key"]]

[host."https://second.example"]
  capabilities = ["pull", "resolve"]
`
	writeFile(t, node("/etc/containerd/certs.d/tls.example:5443/hosts.toml"), hostsTOML)
	for _, p := range []string{"/etc/containerd/conf.d", "/etc/pki/registry/ca.pem"} {
		if _, err := os.Stat(p); err == nil {
			t.Skipf("%s exists on this machine: the test needs it to exist only under the root", p)
		}
	}

	c, err := NewContainerd(context.Background(), ContainerdOptions{Root: hostfs.New(root), TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if want := node("/etc/containerd/conf.d/10-registry.toml"); len(c.roots) != 1 || c.roots[0] != "/etc/containerd/certs.d" {
		t.Fatalf("config_path roots %q: the import %s was not read", c.roots, want)
	}
	// The hosts.toml file is left as it is: the loader gets a copy.
	if b, _ := os.ReadFile(node("/etc/containerd/certs.d/tls.example:5443/hosts.toml")); string(b) != hostsTOML {
		t.Fatalf("the node's hosts.toml was changed:\n%s", b)
	}
	eps, err := c.Endpoints(context.Background(), mustRef(t, "tls.example:5443/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, ep := range eps {
		urls = append(urls, ep.URL)
	}
	if want := "https://mirror.example/v2 https://second.example/v2 https://tls.example:5443/v2"; strings.Join(urls, " ") != want {
		t.Fatalf("endpoints %q, want %s (file order kept)", urls, want)
	}
	for i, ep := range []Endpoint{eps[0], eps[2]} {
		tr, ok := ep.Client.Transport.(*http.Transport)
		if !ok || tr.TLSClientConfig == nil || tr.TLSClientConfig.RootCAs == nil {
			t.Fatalf("%s: no CA pool in %T", ep.URL, ep.Client.Transport)
		}
		if _, err := srv.Certificate().Verify(x509.VerifyOptions{Roots: tr.TLSClientConfig.RootCAs}); err != nil {
			t.Errorf("%s: the CA under the root is not trusted: %v", ep.URL, err)
		}
		if wantPairs := 1 - i; len(tr.TLSClientConfig.Certificates) != wantPairs {
			t.Errorf("%s: %d client certificates, want %d", ep.URL, len(tr.TLSClientConfig.Certificates), wantPairs)
		}
	}
}

func TestRewriteHostsFilePaths(t *testing.T) {
	in := `# comment kept
server = "https://r.example"
ca = '/abs/ca.pem'
client = "rel/client.pem"

[host."https://m.example"]
  ca = ["a.pem", "/b.pem"]
  client = [["/c.pem", "/c.key"], "/d.pem"]
  [host."https://m.example".header]
    ca = "not a path: a header"
`
	m := func(p string) string { return "/ROOT" + strings.TrimPrefix(p, ".") }
	out, changed, err := rewriteHostsFilePaths([]byte(in), m)
	if err != nil || !changed {
		t.Fatalf("changed %v, err %v", changed, err)
	}
	want := `# comment kept
server = "https://r.example"
ca = "/ROOT/abs/ca.pem"
client = "/ROOTrel/client.pem"

[host."https://m.example"]
  ca = ["/ROOTa.pem", "/ROOT/b.pem"]
  client = [["/ROOT/c.pem", "/ROOT/c.key"], "/ROOT/d.pem"]
  [host."https://m.example".header]
    ca = "not a path: a header"
`
	if string(out) != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
	if _, changed, err := rewriteHostsFilePaths([]byte("ca = \"rel.pem\"\n"), m); changed || err != nil {
		t.Errorf("relative paths only: changed %v, err %v; want no copy", changed, err)
	}
	if _, _, err := rewriteHostsFilePaths([]byte("server = [\n"), m); err == nil {
		t.Error("invalid TOML: no error")
	}
	if got := tomlString("a\"b\\c\x01"); got != `"a\"b\\c\u0001"` {
		t.Errorf("tomlString = %s", got)
	}
}

// TestCRIOUnderHostRoot: CRI-O's default files are read under the root,
// a certs.d file that is an absolute symlink points at the node's file,
// and a node without registries.conf is CRI-O's empty configuration with
// registries.conf.d still applied.
func TestCRIOUnderHostRoot(t *testing.T) {
	root := t.TempDir()
	node := func(p string) string { return filepath.Join(root, p) }
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	writeFile(t, node("/etc/containers/registries.conf.d/10-mirror.conf"), `[[registry]]
prefix = "quay.io"
location = "quay.io"
[[registry.mirror]]
location = "mirror.example"
`)
	writeFile(t, node("/usr/share/pki/mirror-ca.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))
	if err := os.MkdirAll(node("/etc/containers/certs.d/mirror.example"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/usr/share/pki/mirror-ca.pem", node("/etc/containers/certs.d/mirror.example/ca.crt")); err != nil {
		t.Fatal(err)
	}
	c, err := NewCRIO(context.Background(), CRIOOptions{Root: hostfs.New(root)})
	if err != nil {
		t.Fatal(err)
	}
	eps, err := c.Endpoints(context.Background(), mustRef(t, "quay.io/org/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || eps[0].URL != "https://mirror.example/v2" || eps[1].URL != "https://quay.io/v2" {
		t.Fatalf("endpoints %+v: registries.conf.d under the root not applied", eps)
	}
	tr := eps[0].Client.Transport.(*http.Transport)
	if _, err := srv.Certificate().Verify(x509.VerifyOptions{Roots: tr.TLSClientConfig.RootCAs}); err != nil {
		t.Errorf("the mirror's CA, a symlink to the node's file, is not trusted: %v", err)
	}
}
