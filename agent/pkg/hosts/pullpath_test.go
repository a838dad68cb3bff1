package hosts

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
)

// The rules e2e/fidelity measured against the real runtimes, each as
// one line: a change to PullPathFor that breaks one fails here first.
func TestPullPathFor(t *testing.T) {
	withAuth := ContainerdRegistryConfig{Configs: map[string]RegistryHostConfig{"r": {Auth: &RuntimeAuth{Username: "u"}}}}
	withAuth.finish()
	tests := []struct {
		name, version string
		cfg           ContainerdRegistryConfig
		roots         []string
		legacy, tls   bool
		err           string
	}{
		{"1.6 config_path list", "1.6.20~ds1", ContainerdRegistryConfig{ConfigPath: "/a:/b"}, []string{"/a", "/b"}, false, false, ""},
		{"1.7 no config_path: legacy with tls", "v1.7.35", ContainerdRegistryConfig{}, nil, true, true, ""},
		{"2.0 no config_path: legacy without tls, no default", "v2.0.14", ContainerdRegistryConfig{}, nil, true, false, ""},
		{"2.0 config_path list", "v2.0.14", ContainerdRegistryConfig{ConfigPath: "/a:/b"}, []string{"/a", "/b"}, false, false, ""},
		{"2.4 transfer: default config_path as one directory", "v2.4.2", ContainerdRegistryConfig{}, []string{DefaultConfigPath}, false, false, ""},
		{"2.4 transfer: a list is one directory", "v2.4.2", ContainerdRegistryConfig{ConfigPath: "/a:/b"}, []string{"/a:/b"}, false, false, ""},
		{"2.4 use_local_image_pull: the list", "v2.4.2", ContainerdRegistryConfig{ConfigPath: "/a:/b", UseLocalImagePull: true}, []string{"/a", "/b"}, false, false, ""},
		{"2.4 registry.configs forces local pull: default list", "v2.4.2", withAuth, []string{"/etc/containerd/certs.d", "/etc/docker/certs.d"}, false, false, ""},
		{"2.4 mirrors: legacy local pull", "v2.4.2", ContainerdRegistryConfig{Mirrors: map[string][]string{"r": {"https://m"}}, LocalPullBecause: "registry.mirrors"}, nil, true, false, ""},
		{"mirrors with config_path refused", "v1.7.35", ContainerdRegistryConfig{ConfigPath: "/a", Mirrors: map[string][]string{"r": {"https://m"}}}, nil, false, false, "cannot be set"},
		{"unknown version: the newest", "", ContainerdRegistryConfig{ConfigPath: "/a:/b"}, []string{"/a:/b"}, false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PullPathFor(tt.version, tt.cfg)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(p.Roots, "|") != strings.Join(tt.roots, "|") || p.Legacy != tt.legacy || p.LegacyTLS != tt.tls {
				t.Errorf("%s: roots %q legacy %v tls %v, want %q %v %v", p.Mode, p.Roots, p.Legacy, p.LegacyTLS, tt.roots, tt.legacy, tt.tls)
			}
		})
	}
}

func TestReadContainerdConfigRegistryConfigs(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "config.toml"), `version = 3
[plugins."io.containerd.cri.v1.images"]
  use_local_image_pull = true
[plugins."io.containerd.cri.v1.images".registry.configs."r.example:5000".auth]
  username = "u"
  password = "p"
[plugins."io.containerd.cri.v1.images".registry.configs."r.example:5000".tls]
  ca_file = "/etc/ca.crt"
[plugins."io.containerd.cri.v1.images".registry.auths."https://a.example"]
  auth = "dXNlcjpwYXNz"
`)
	cfg, err := ReadContainerdConfig(hostfs.Root{}, filepath.Join(dir, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Version != 3 || !cfg.UseLocalImagePull || cfg.LocalPullBecause != "registry.configs" {
		t.Errorf("version %d, use_local_image_pull %v, local pull because %q", cfg.Version, cfg.UseLocalImagePull, cfg.LocalPullBecause)
	}
	hc := cfg.Configs["r.example:5000"]
	if !hc.HasTLS || hc.CAFile != "/etc/ca.crt" || hc.Auth == nil {
		t.Fatalf("configs: %+v", hc)
	}
	if u, p, err := hc.Auth.UserSecret(); err != nil || u != "u" || p != "p" {
		t.Errorf("auth: %q %q %v", u, p, err)
	}
	a := cfg.Configs["a.example"].Auth
	if a == nil {
		t.Fatal("registry.auths not folded into configs by host")
	}
	if u, p, err := a.UserSecret(); err != nil || u != "user" || p != "pass" {
		t.Errorf("auths: %q %q %v", u, p, err)
	}
	if s := hc.Auth.String() + a.GoString(); strings.Contains(s, "pass") {
		t.Errorf("credentials shown: %s", s)
	}
}
