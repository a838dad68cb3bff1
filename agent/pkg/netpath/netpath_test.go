package netpath

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
)

func TestSplitQuoted(t *testing.T) {
	tests := []struct{ in, want string }{
		{`HTTP_PROXY=http://p:3128`, `HTTP_PROXY=http://p:3128`},
		{`"HTTP_PROXY=http://p:3128" "NO_PROXY=localhost,10.0.0.0/8"`, `HTTP_PROXY=http://p:3128|NO_PROXY=localhost,10.0.0.0/8`},
		{`A=1 'B=two words' C="x\"y"`, `A=1|B=two words|C=x"y`},
		{`  `, ``},
	}
	for _, tt := range tests {
		if got := strings.Join(splitQuoted(tt.in), "|"); got != tt.want {
			t.Errorf("splitQuoted(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestLoadProxySystemd(t *testing.T) {
	dir := t.TempDir()
	unitFile := filepath.Join(dir, "containerd.service")
	dropIns := filepath.Join(dir, "containerd.service.d")
	os.MkdirAll(dropIns, 0o755)
	os.WriteFile(unitFile, []byte("[Service]\nEnvironment=HTTP_PROXY=http://old:1\nExecStart=/usr/bin/containerd\n"), 0o644)
	os.WriteFile(filepath.Join(dropIns, "10-proxy.conf"), []byte("[Service]\nEnvironment=\"HTTPS_PROXY=http://user:pw@proxy.example:3128\" \"NO_PROXY=localhost,127.0.0.1,.internal\"\n"), 0o644)
	os.WriteFile(filepath.Join(dropIns, "20-http.conf"), []byte("[Service]\nEnvironment=HTTP_PROXY=http://proxy.example:3128\n"), 0o644)
	os.WriteFile(filepath.Join(dropIns, "notes.txt"), []byte("ignored"), 0o644)

	cfg, err := LoadProxy(context.Background(), ProxyFromSystemd, hostfs.Root{}, []string{unitFile, dropIns, filepath.Join(dir, "missing.d")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPProxy != "http://proxy.example:3128" || cfg.HTTPSProxy != "http://user:pw@proxy.example:3128" || cfg.NoProxy != "localhost,127.0.0.1,.internal" {
		t.Fatalf("cfg = %+v", cfg)
	}
	if strings.Contains(cfg.Redacted().HTTPSProxy, "pw") {
		t.Errorf("Redacted leaks the password: %+v", cfg.Redacted())
	}
	f := cfg.Func()
	for _, tt := range []struct{ url, proxy string }{
		{"https://registry.example/v2/", "http://user:pw@proxy.example:3128"},
		{"http://registry.example/v2/", "http://proxy.example:3128"},
		{"https://mirror.internal/v2/", ""},
	} {
		req, _ := http.NewRequest("GET", tt.url, nil)
		u, err := f(req)
		got := ""
		if u != nil {
			got = u.String()
		}
		if err != nil || got != tt.proxy {
			t.Errorf("proxy for %s = %q, %v; want %q", tt.url, got, err, tt.proxy)
		}
	}
}

// TestLoadProxyUnderRoot: the unit paths are the node's, read under the
// root; a drop-in that is an absolute symlink points at the node's file.
func TestLoadProxyUnderRoot(t *testing.T) {
	root := t.TempDir()
	dropIns := filepath.Join(root, "etc/systemd/system/crio.service.d")
	os.MkdirAll(dropIns, 0o755)
	os.MkdirAll(filepath.Join(root, "usr/share/proxy"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/share/proxy/proxy.conf"), []byte("[Service]\nEnvironment=HTTPS_PROXY=http://node-proxy:3128\n"), 0o644)
	os.Symlink("/usr/share/proxy/proxy.conf", filepath.Join(dropIns, "10-proxy.conf"))
	cfg, err := LoadProxy(context.Background(), ProxyFromSystemd, hostfs.New(root), UnitPaths("crio.service"), nil)
	if err != nil || cfg.HTTPSProxy != "http://node-proxy:3128" {
		t.Fatalf("proxy %+v, %v", cfg, err)
	}
}

func TestLoadProxyOther(t *testing.T) {
	env := map[string]string{"https_proxy": "http://lower:1", "NO_PROXY": "x"}
	cfg, err := LoadProxy(context.Background(), ProxyFromEnv, hostfs.Root{}, nil, func(k string) string { return env[k] })
	if err != nil || cfg.HTTPSProxy != "http://lower:1" || cfg.NoProxy != "x" {
		t.Fatalf("env: %+v %v", cfg, err)
	}
	if cfg, err := LoadProxy(context.Background(), ProxyFromNone, hostfs.Root{}, nil, nil); err != nil || cfg.Func() != nil {
		t.Fatalf("none: %+v %v", cfg, err)
	}
	if _, err := LoadProxy(context.Background(), "dhcp", hostfs.Root{}, nil, nil); err == nil || !strings.Contains(err.Error(), `"dhcp"`) {
		t.Fatalf("bad source: %v", err)
	}
}

func TestLoadResolver(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "resolv.conf")
	os.WriteFile(good, []byte("# node\nsearch example.com\nnameserver 127.0.0.53\nnameserver ::1\noptions ndots:2\n"), 0o644)
	r, err := LoadResolver(good)
	if err != nil || strings.Join(r.Nameservers, ",") != "127.0.0.53:53,[::1]:53" {
		t.Fatalf("resolver %+v %v", r, err)
	}
	for name, content := range map[string]string{"empty": "search x\n", "bad": "nameserver not-an-ip\n"} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		if _, err := LoadResolver(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err %v", name, err)
		}
	}
	if _, err := LoadResolver(filepath.Join(dir, "absent")); err == nil || !strings.Contains(err.Error(), "--resolv-conf") {
		t.Errorf("absent: %v", err)
	}
}

func FuzzSystemdUnit(f *testing.F) {
	f.Add("[Service]\nEnvironment=\"HTTPS_PROXY=http://p:1\" NO_PROXY=x\n")
	f.Add("[Service]\nEnvironment=\\\n")
	f.Fuzz(func(t *testing.T, content string) {
		p := filepath.Join(t.TempDir(), "u.conf")
		os.WriteFile(p, []byte(content), 0o644)
		_, _ = unitEnvironment(p)
	})
}

func FuzzLoadResolver(f *testing.F) {
	f.Add("nameserver 10.0.0.10\nsearch a b\noptions ndots:5\n")
	f.Add("nameserver fe80::1%eth0\n")
	f.Fuzz(func(t *testing.T, content string) {
		p := filepath.Join(t.TempDir(), "resolv.conf")
		os.WriteFile(p, []byte(content), 0o644)
		r, err := LoadResolver(p)
		if err == nil && len(r.Nameservers) == 0 {
			t.Fatal("resolver without nameservers")
		}
	})
}

func TestApplyKeepsDialer(t *testing.T) {
	var dialed []string
	tr := &http.Transport{DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
		dialed = append(dialed, addr)
		return nil, errors.New("test dialer")
	}}
	// A resolver whose nameserver is this process's fake: answer by hand.
	p := Path{}
	p.Apply(tr)
	_, _ = tr.DialContext(context.Background(), "tcp", "127.0.0.1:5000")
	if len(dialed) != 1 || dialed[0] != "127.0.0.1:5000" {
		t.Fatalf("the transport's own dialer was not kept: %v", dialed)
	}
}

func TestNodeTrust(t *testing.T) {
	root := t.TempDir()
	if _, _, ok := NodeTrust(hostfs.New(root)); ok {
		t.Fatal("found a CA bundle in an empty root")
	}
	// As on RHEL: the bundle Go looks for second is an absolute symlink
	// into /etc/pki/ca-trust, which is the node's, under the root.
	for _, d := range []string{"etc/pki/tls/certs", "etc/pki/ca-trust/extracted/pem"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"), []byte("-----BEGIN CERTIFICATE-----\n"), 0o644)
	os.Symlink("/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", filepath.Join(root, "etc/pki/tls/certs/ca-bundle.crt"))
	file, dirs, ok := NodeTrust(hostfs.New(root))
	if want := filepath.Join(root, "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"); !ok || file != want {
		t.Fatalf("NodeTrust = %q, %v; want %q", file, ok, want)
	}
	if want := []string{root + "/etc/ssl/certs", root + "/etc/pki/tls/certs"}; !slices.Equal(dirs, want) {
		t.Errorf("dirs %q, want %q", dirs, want)
	}
}

// TestLoadProxyEnvironmentFiles: EnvironmentFile= files override the
// units' Environment= (as in systemd), an empty EnvironmentFile= drops the
// files named before it, %N is the unit's name without its suffix, quotes
// and line continuations are read as systemd reads them, and a Prefix
// (k3s's CONTAINERD_) wins over the plain variable.
func TestLoadProxyEnvironmentFiles(t *testing.T) {
	root := t.TempDir()
	write := func(p, content string) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/systemd/system/k3s.service", "[Service]\nEnvironment=HTTP_PROXY=http://from-unit:1\nEnvironmentFile=-/etc/dropped\nEnvironmentFile=\nEnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/missing\n")
	write("etc/dropped", "NO_PROXY=dropped\n")
	write("etc/default/k3s", "# comment\n; another\nHTTP_PROXY=\"http://from-file:2\"\nNO_PROXY='10.0.0.0/8,\\\n.svc'\nCONTAINERD_HTTPS_PROXY=http://containerd-only:3\nHTTPS_PROXY=http://everyone:4\n")
	ctx := context.Background()
	cfg, err := LoadProxyOptions(ctx, ProxyOptions{Source: ProxyFromSystemd, Root: hostfs.New(root), UnitFiles: UnitPaths("k3s.service"), Prefix: "CONTAINERD_"})
	if err != nil {
		t.Fatal(err)
	}
	want := ProxyConfig{HTTPProxy: "http://from-file:2", HTTPSProxy: "http://containerd-only:3", NoProxy: "10.0.0.0/8,.svc"}
	if cfg.HTTPProxy != want.HTTPProxy || cfg.HTTPSProxy != want.HTTPSProxy || cfg.NoProxy != want.NoProxy {
		t.Errorf("proxy %+v, want %+v", cfg, want)
	}
	if !strings.Contains(cfg.Source, filepath.Join(root, "etc/default/k3s")) || strings.Contains(cfg.Source, "dropped") {
		t.Errorf("source %q: want the env file named, the dropped one not", cfg.Source)
	}
	// Without the prefix, the plain variable; --runtime-env-file after the unit's.
	write("etc/extra", "HTTP_PROXY=http://extra:5\n")
	cfg, err = LoadProxyOptions(ctx, ProxyOptions{Source: ProxyFromSystemd, Root: hostfs.New(root), UnitFiles: UnitPaths("k3s.service"), EnvFiles: []string{"/etc/extra", "/etc/absent"}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPSProxy != "http://everyone:4" || cfg.HTTPProxy != "http://extra:5" {
		t.Errorf("proxy %+v, want HTTPS_PROXY from the file and HTTP_PROXY from --runtime-env-file", cfg)
	}
}
