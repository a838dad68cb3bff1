package cli

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/cri"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/agent/pkg/runtimeprofile"
	"github.com/pullwatch/pullwatch/pkg/envflag"
)

// TestRuntimeProfileLayouts lays out a node the way each distribution
// does (the paths its upstream writes: k3s's and RKE2's agent directories
// and systemd units with their EnvironmentFile=s, Talos's /etc/cri, CRI-O's
// /etc/containers) under a host root, with a registry mirror and a proxy
// configured the distribution's way, and checks that the agent, with
// --runtime-profile=auto and the socket that distribution's runtime
// answers on, takes that profile, reads the mirror from the runtime's
// registry configuration and the proxy from the runtime's environment.
// Real runtimes of these layouts are not run here (no k3s, RKE2, Talos or
// CRI-O on this machine kind); e2e/deploy checks that the DaemonSet of
// each profile mounts these paths.
func TestRuntimeProfileLayouts(t *testing.T) {
	const mirrorHosts = `server = "https://registry.example.com"
[host."https://mirror.example.net"]
  capabilities = ["pull", "resolve"]
`
	containerdConfig := func(configPath string) string {
		return "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"" + configPath + "\"\n"
	}
	cases := []struct {
		profile, endpoint, runtime string
		files                      map[string]string
		wantProxy                  string
		wantMirror                 string
	}{
		{
			profile: runtimeprofile.Containerd, endpoint: runtimeprofile.ContainerdSocket, runtime: "containerd",
			files: map[string]string{
				"etc/containerd/config.toml":                             containerdConfig("/etc/containerd/certs.d"),
				"etc/containerd/certs.d/registry.example.com/hosts.toml": mirrorHosts,
				// containerd's release tarball installs its unit here.
				"usr/local/lib/systemd/system/containerd.service":         "[Service]\nExecStart=/usr/local/bin/containerd\n",
				"etc/systemd/system/containerd.service.d/http-proxy.conf": "[Service]\nEnvironment=\"HTTPS_PROXY=http://proxy.containerd:3128\"\n",
			},
			wantProxy: "http://proxy.containerd:3128", wantMirror: "mirror.example.net",
		},
		{
			// k3s's install script: /etc/systemd/system/k3s-agent.service
			// with EnvironmentFile=-/etc/default/%N, -/etc/sysconfig/%N and
			// -/etc/systemd/system/k3s-agent.service.env; its containerd
			// gets CONTAINERD_HTTPS_PROXY as HTTPS_PROXY.
			profile: runtimeprofile.K3s, endpoint: runtimeprofile.K3sSocket, runtime: "containerd",
			files: map[string]string{
				"var/lib/rancher/k3s/agent/etc/containerd/config.toml":                             containerdConfig("/var/lib/rancher/k3s/agent/etc/containerd/certs.d"),
				"var/lib/rancher/k3s/agent/etc/containerd/certs.d/registry.example.com/hosts.toml": mirrorHosts,
				"etc/systemd/system/k3s-agent.service": "[Service]\nType=notify\nEnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/sysconfig/%N\n" +
					"EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env\nExecStart=/usr/local/bin/k3s agent\n",
				"etc/systemd/system/k3s-agent.service.env": "K3S_TOKEN=\"secret\"\nK3S_URL='https://server:6443'\nHTTPS_PROXY=http://proxy.all:3128\nCONTAINERD_HTTPS_PROXY=\"http://proxy.k3s:3128\"\n",
				// This node runs no containerd of its own.
				"etc/containerd/config.toml": containerdConfig("/etc/containerd/certs.d"),
			},
			wantProxy: "http://proxy.k3s:3128", wantMirror: "mirror.example.net",
		},
		{
			// RKE2's tarball install: /usr/local/lib/systemd/system/
			// rke2-agent.service, EnvironmentFile=-/etc/default/%N,
			// -/etc/sysconfig/%N, -/usr/local/lib/systemd/system/%N.env.
			profile: runtimeprofile.RKE2, endpoint: runtimeprofile.K3sSocket, runtime: "containerd",
			files: map[string]string{
				"var/lib/rancher/rke2/agent/etc/containerd/config.toml":                             containerdConfig("/var/lib/rancher/rke2/agent/etc/containerd/certs.d"),
				"var/lib/rancher/rke2/agent/etc/containerd/certs.d/registry.example.com/hosts.toml": mirrorHosts,
				"usr/local/lib/systemd/system/rke2-agent.service": "[Service]\nEnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/sysconfig/%N\n" +
					"EnvironmentFile=-/usr/local/lib/systemd/system/%N.env\nExecStart=/usr/local/bin/rke2 agent\n",
				"etc/default/rke2-agent": "# proxy for RKE2\nHTTP_PROXY=http://proxy.rke2:3128\nHTTPS_PROXY=http://proxy.rke2:3128\nNO_PROXY=127.0.0.0/8,10.0.0.0/8\n",
			},
			wantProxy: "http://proxy.rke2:3128", wantMirror: "mirror.example.net",
		},
		{
			// Talos: the CRI's containerd reads /etc/cri/containerd.toml,
			// which imports conf.d/cri.toml; the registries are hosts.toml
			// files under /etc/cri/conf.d/hosts. /etc/containerd/config.toml
			// is the system containerd's.
			profile: runtimeprofile.Talos, endpoint: runtimeprofile.ContainerdSocket, runtime: "containerd",
			files: map[string]string{
				"etc/cri/containerd.toml":                              "version = 3\nimports = [\"/etc/cri/conf.d/cri.toml\"]\n",
				"etc/cri/conf.d/cri.toml":                              "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/cri/conf.d/hosts'\n",
				"etc/cri/conf.d/hosts/registry.example.com/hosts.toml": mirrorHosts,
				"etc/containerd/config.toml":                           "version = 2\n",
			},
			wantMirror: "mirror.example.net",
		},
		{
			profile: runtimeprofile.CRIO, endpoint: runtimeprofile.CRIOSocket, runtime: "cri-o",
			files: map[string]string{
				"etc/containers/registries.conf":      "[[registry]]\nlocation = \"registry.example.com\"\n[[registry.mirror]]\nlocation = \"mirror.example.net\"\n",
				"usr/lib/systemd/system/crio.service": "[Service]\nEnvironmentFile=-/etc/sysconfig/crio\nExecStart=/usr/bin/crio\n",
				"etc/sysconfig/crio":                  "HTTPS_PROXY=http://proxy.crio:3128\n",
			},
			wantProxy: "http://proxy.crio:3128", wantMirror: "mirror.example.net",
		},
	}
	ref, err := imageref.Parse("registry.example.com/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.profile, func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			tc.files["etc/resolv.conf"] = "nameserver 192.0.2.53\n"
			for p, content := range tc.files {
				full := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			var c common
			c.register(envflag.New("check", "", ""), Env{Hostname: func() (string, error) { return "node-1", nil }})
			c.hostRoot = root
			c.explicit = map[string]bool{}
			if err := c.validate(); err != nil {
				t.Fatal(err)
			}
			c.useProfile(runtimeprofile.Detect(runtimeprofile.Auto, c.root, tc.endpoint, tc.runtime))
			if c.profile.Name != tc.profile {
				t.Fatalf("auto on %s took profile %q, want %q", tc.endpoint, c.profile.Name, tc.profile)
			}
			path, err := c.networkPath(ctx, log, tc.runtime)
			if err != nil {
				t.Fatal(err)
			}
			if got := path.Proxy.HTTPSProxy; got != tc.wantProxy {
				t.Errorf("HTTPS proxy %q (from %s), want %q", got, path.Proxy.Source, tc.wantProxy)
			}
			res, err := c.registryResolver(ctx, log, cri.Runtime{Name: tc.runtime, Version: "2.0.0"}, path)
			if err != nil {
				t.Fatal(err)
			}
			eps, err := res.Endpoints(ctx, ref)
			if err != nil {
				t.Fatalf("endpoints: %v\n%s", err, logs.String())
			}
			if len(eps) == 0 || !bytes.Contains([]byte(eps[0].URL), []byte(tc.wantMirror)) {
				var urls []string
				for _, e := range eps {
					urls = append(urls, e.URL)
				}
				t.Errorf("endpoints %v, want %s first (the %s layout's registry configuration)\n%s", urls, tc.wantMirror, tc.profile, logs.String())
			}
		})
	}
}

// TestRuntimeProfileExplicitFlagsWin: a path flag set explicitly is kept
// whatever the profile says.
func TestRuntimeProfileExplicitFlagsWin(t *testing.T) {
	c := common{containerdConfig: "/custom/config.toml", explicit: map[string]bool{"containerd-config": true}}
	k3s, _ := runtimeprofile.Get(runtimeprofile.K3s)
	c.useProfile(k3s)
	if c.containerdConfig != "/custom/config.toml" {
		t.Errorf("containerd config %q, want the explicit /custom/config.toml", c.containerdConfig)
	}
	if got := c.runtimeUnits("containerd"); len(got) != 2 || got[0] != "k3s.service" {
		t.Errorf("units %v, want k3s's", got)
	}
	c.runtimeUnit = "a.service, b.service"
	if got := c.runtimeUnits("containerd"); len(got) != 2 || got[1] != "b.service" {
		t.Errorf("units %v, want --runtime-unit's list", got)
	}
}
