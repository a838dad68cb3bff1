package hosts

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
)

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadContainerdConfig(t *testing.T) {
	tests := []struct {
		name       string
		files      map[string]string
		configPath string
		mirrors    map[string]string
		err        string
	}{
		{"missing file: defaults", nil, "", nil, ""},
		{"containerd 1.x key", map[string]string{"config.toml": `version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"`}, "/etc/containerd/certs.d", nil, ""},
		{"containerd 2.x key", map[string]string{"config.toml": `version = 3
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "/a:/b"`}, "/a:/b", nil, ""},
		{"imports override", map[string]string{
			"config.toml": `version = 2
imports = ["conf.d/*.toml"]
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/main"`,
			"conf.d/10-registry.toml": `version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/imported"`}, "/imported", nil, ""},
		{"legacy mirrors", map[string]string{"config.toml": `version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://mirror.example", "https://registry-1.docker.io"]`}, "", map[string]string{"docker.io": "https://mirror.example,https://registry-1.docker.io"}, ""},
		{"not toml", map[string]string{"config.toml": "version = [\n"}, "", nil, "is not valid TOML"},
		{"config_path not a string", map[string]string{"config.toml": `[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = 3`}, "", nil, "config_path must be a string"},
		{"endpoint not a list", map[string]string{"config.toml": `[plugins."io.containerd.grpc.v1.cri".registry.mirrors."x"]
  endpoint = "https://m"`}, "", nil, "want a list of strings"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tt.files {
				writeFile(t, filepath.Join(dir, name), content)
			}
			cfg, err := ReadContainerdConfig(hostfs.Root{}, filepath.Join(dir, "config.toml"))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), dir) {
					t.Fatalf("err = %v, want %q naming the file", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.ConfigPath != tt.configPath {
				t.Errorf("config_path = %q, want %q", cfg.ConfigPath, tt.configPath)
			}
			for host, want := range tt.mirrors {
				if got := strings.Join(cfg.Mirrors[host], ","); got != want {
					t.Errorf("mirrors[%s] = %q, want %q", host, got, want)
				}
			}
		})
	}
}

func TestContainerdEndpoints(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs.d")
	writeFile(t, filepath.Join(dir, "config.toml"), `version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "`+certs+`"`)
	writeFile(t, filepath.Join(certs, "upstream.example:5000", "hosts.toml"), `server = "https://upstream.example:5000"
[host."https://mirror.example:5001"]
  capabilities = ["pull", "resolve"]
  [host."https://mirror.example:5001".header]
    X-Team = ["platform"]
[host."https://pullonly.example"]
  capabilities = ["pull"]
`)
	writeFile(t, filepath.Join(certs, "_default", "hosts.toml"), `[host."https://catchall.example"]
  capabilities = ["pull", "resolve"]
`)
	writeFile(t, filepath.Join(certs, "broken.example", "hosts.toml"), "server = [\n")
	c, err := NewContainerd(context.Background(), ContainerdOptions{ConfigFile: filepath.Join(dir, "config.toml")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		image string
		want  []string // url role skip?
	}{
		{"upstream.example:5000/app:v1", []string{"https://mirror.example:5001/v2 mirror", "https://pullonly.example/v2 mirror skip", "https://upstream.example:5000/v2 upstream"}},
		{"upstream.example:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", []string{"https://mirror.example:5001/v2 mirror", "https://pullonly.example/v2 mirror", "https://upstream.example:5000/v2 upstream"}},
		{"other.example/app:v1", []string{"https://catchall.example/v2 mirror", "https://other.example/v2 upstream"}},
		// A malformed hosts.toml is ignored by containerd, which falls back to the default.
		{"broken.example/app:v1", []string{"https://broken.example/v2 upstream"}},
	}
	for _, tt := range tests {
		eps, err := c.Endpoints(context.Background(), mustRef(t, tt.image))
		if err != nil {
			t.Fatalf("%s: %v", tt.image, err)
		}
		var got []string
		for _, ep := range eps {
			s := ep.URL + " " + ep.Role.Word()
			if ep.Skip != "" {
				s += " skip"
			}
			got = append(got, s)
			if ep.Client == nil {
				t.Errorf("%s: endpoint %s has no client", tt.image, ep.URL)
			}
		}
		if strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("%s:\n got %q\nwant %q", tt.image, got, tt.want)
		}
		if tt.image == "upstream.example:5000/app:v1" && eps[0].Header.Get("X-Team") != "platform" {
			t.Errorf("header not carried: %v", eps[0].Header)
		}
	}
}

func TestLegacyMirrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "config.toml"), `version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://mirror.example"]`)
	c, err := NewContainerd(context.Background(), ContainerdOptions{ConfigFile: filepath.Join(dir, "config.toml")})
	if err != nil {
		t.Fatal(err)
	}
	eps, err := c.Endpoints(context.Background(), mustRef(t, "nginx:1.27"))
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || eps[0].URL != "https://mirror.example/v2" || eps[0].Role != RoleMirror || eps[1].URL != "https://registry-1.docker.io/v2" || eps[1].Role != RoleUpstream {
		t.Fatalf("endpoints %+v", eps)
	}
}

func FuzzReadContainerdConfig(f *testing.F) {
	f.Add(`version = 2
imports = ["x.toml"]
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://m"]`)
	f.Add("[plugins]\nx = 1")
	f.Fuzz(func(t *testing.T, content string) {
		dir := t.TempDir()
		p := filepath.Join(dir, "config.toml")
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := ReadContainerdConfig(hostfs.Root{}, p)
		if err != nil && !strings.Contains(err.Error(), p) {
			t.Fatalf("error does not name the file: %v", err)
		}
		_ = cfg
	})
}

func FuzzContainerdHostsTOML(f *testing.F) {
	f.Add(`server = "https://r.example"
[host."https://m.example"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  override_path = true
  dial_timeout = "3s"
  [host."https://m.example".header]
    X-A = "b"`)
	f.Add("[host]\n")
	f.Fuzz(func(t *testing.T, content string) {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "certs.d", "r.example", "hosts.toml"), content)
		c, err := NewContainerd(context.Background(), ContainerdOptions{ConfigFile: filepath.Join(dir, "none.toml"), ConfigPath: filepath.Join(dir, "certs.d")})
		if err != nil {
			t.Fatal(err)
		}
		// Whatever the file says, resolving must not panic, and any
		// endpoint returned must be a usable URL.
		eps, err := c.Endpoints(context.Background(), mustRef(t, "r.example/app:v1"))
		if err != nil {
			return
		}
		for _, ep := range eps {
			if !strings.Contains(ep.URL, "://") {
				t.Fatalf("endpoint URL %q", ep.URL)
			}
		}
	})
}

func TestLegacyHostsReader(t *testing.T) {
	for v, want := range map[string]bool{"1.6.20~ds1": true, "v1.6.38": true, "1.7.27": false, "2.1.0": false, "": false, "garbage": false} {
		if got := legacyHosts(v); got != want {
			t.Errorf("legacyHosts(%q) = %v, want %v", v, got, want)
		}
	}
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs.d")
	ca := filepath.Join(dir, "ca.pem")
	writeFile(t, ca, testCA)
	writeFile(t, filepath.Join(certs, "r.example", "hosts.toml"), "server = \"https://r.example\"\nca = \""+ca+"\"\n")
	for _, tt := range []struct {
		version, image, want string
	}{
		// 1.6 refuses a file without [host]: default endpoint.
		{"1.6.20", "r.example/app:v1", "https://r.example/v2"},
		// 1.6 talks plain HTTP to an unconfigured loopback registry.
		{"1.6.20", "127.0.0.1:5000/app:v1", "http://127.0.0.1:5000/v2"},
		// 2.x reads the file, and tries HTTPS first on loopback.
		{"2.1.0", "r.example/app:v1", "https://r.example/v2"},
		{"2.1.0", "127.0.0.1:5000/app:v1", "https://127.0.0.1:5000/v2"},
	} {
		c, err := NewContainerd(context.Background(), ContainerdOptions{ConfigFile: filepath.Join(dir, "none.toml"), ConfigPath: certs, RuntimeVersion: tt.version})
		if err != nil {
			t.Fatal(err)
		}
		eps, err := c.Endpoints(context.Background(), mustRef(t, tt.image))
		if err != nil || len(eps) != 1 || eps[0].URL != tt.want || eps[0].Client == nil {
			t.Errorf("containerd %s, %s: %+v %v; want %s", tt.version, tt.image, eps, err, tt.want)
		}
	}
}

// testCA is a throwaway self-signed CA certificate (no key kept).
const testCA = `-----BEGIN CERTIFICATE-----
MIIBajCCARGgAwIBAgIBATAKBggqhkjOPQQDAjAcMRowGAYDVQQDExFwdWxsd2F0
Y2ggdGVzdCBDQTAgFw03MDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowHDEa
MBgGA1UEAxMRcHVsbHdhdGNoIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAAQjR1bcbQRxuBIv+Y0fPaNNTYK4fkWbE9T5fHt1AIEoq6xU4KfZ9k2iVwht
UHKhrnDLIK68B5MgqYHQhoGfc1M6o0IwQDAOBgNVHQ8BAf8EBAMCAgQwDwYDVR0T
AQH/BAUwAwEB/zAdBgNVHQ4EFgQUuTp76Ofs1SbdugoPEbgw4mvt7TIwCgYIKoZI
zj0EAwIDRwAwRAIgeAkji/0xQv4ldtgriv1woguzNaAhJAwmZXuM3mtyoikCIGac
pmKknYQcWYpfiZ+b55ysKROAdWCdgCmVKBpsYrLC
-----END CERTIFICATE-----
`

// containerd 1.6 refuses a hosts.toml without [host] and reads the host
// directory's certificate files instead (its loadCertFiles): the default
// endpoint then trusts the directory's ca.crt.
func TestLegacyIgnoredHostsFileKeepsDirectoryCerts(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "https://")
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs.d")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	writeFile(t, filepath.Join(certs, host, "ca.crt"), string(caPEM))
	writeFile(t, filepath.Join(certs, host, "hosts.toml"), "server = \"https://"+host+"\"\nca = \"/nowhere/ca.crt\"\n")
	c, err := NewContainerd(context.Background(), ContainerdOptions{ConfigFile: filepath.Join(dir, "none.toml"), ConfigPath: certs, RuntimeVersion: "1.6.20", TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	eps, err := c.Endpoints(context.Background(), mustRef(t, host+"/app:v1"))
	if err != nil || len(eps) != 1 || eps[0].Client == nil {
		t.Fatalf("endpoints: %+v %v", eps, err)
	}
	resp, err := eps[0].Client.Get(srv.URL)
	if err != nil {
		t.Fatalf("the endpoint's client does not trust the directory's ca.crt, as containerd 1.6 does: %v", err)
	}
	resp.Body.Close()
}

// TestRuntimeHeaders: registry.headers go with every endpoint, before the
// host's own hosts.toml headers, without changing what the loader keeps.
func TestRuntimeHeaders(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs.d")
	writeFile(t, filepath.Join(dir, "config.toml"), `version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "`+certs+`"
[plugins."io.containerd.grpc.v1.cri".registry.headers]
  X-Gate = ["open"]
  x-team = ["runtime"]`)
	writeFile(t, filepath.Join(certs, "upstream.example:5000", "hosts.toml"), `server = "https://upstream.example:5000"
[host."https://mirror.example:5001"]
  capabilities = ["pull", "resolve"]
  [host."https://mirror.example:5001".header]
    X-Team = ["platform"]
`)
	c, err := NewContainerd(context.Background(), ContainerdOptions{ConfigFile: filepath.Join(dir, "config.toml")})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time from the loader's cache
		for _, image := range []string{"upstream.example:5000/app:v1", "other.example/app:v1"} {
			eps, err := c.Endpoints(context.Background(), mustRef(t, image))
			if err != nil {
				t.Fatal(err)
			}
			for _, ep := range eps {
				if ep.Header.Get("X-Gate") != "open" {
					t.Errorf("%s %s: registry.headers not sent: %v", image, ep.URL, ep.Header)
				}
				want := "runtime"
				if ep.Role == RoleMirror {
					want = "runtime,platform"
				}
				if got := strings.Join(ep.Header.Values("X-Team"), ","); got != want {
					t.Errorf("%s %s: X-Team %q, want %q", image, ep.URL, got, want)
				}
			}
		}
	}
}
