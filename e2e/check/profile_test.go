package check_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// TestCheckK3sLayout: a real containerd laid out as k3s lays out its
// embedded one — its config.toml at /var/lib/rancher/k3s/agent/etc/containerd
// (bind-mounted there in containerd's own mount namespace), config_path the
// certs.d beside it, whose hosts.toml sends registry.k3s.test to the local
// registry — pulls an image of registry.k3s.test, and `pullwatch-agent check
// --host-root` over the same tree finds it available through that mirror
// with --runtime-profile=k3s, and not with the plain containerd profile
// (which reads /etc/containerd/config.toml, absent here): the k3s profile's
// paths are what the runtime uses. (The socket is the harness's own:
// /run/k3s/containerd is not this test's to take, so the profile is named
// rather than found from the socket; agent/pkg/cli tests that.)
func TestCheckK3sLayout(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const nodeDir = "/var/lib/rancher/k3s/agent/etc/containerd"
	tree := t.TempDir() // the node's / as the agent sees it (--host-root)
	k3sDir := filepath.Join(tree, nodeDir)
	hosts := "server = \"https://registry.k3s.test\"\n[host.\"http://" + l.Reg.Addr() + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	for p, content := range map[string]string{
		filepath.Join(k3sDir, "certs.d", "registry.k3s.test", "hosts.toml"): hosts,
		filepath.Join(tree, "etc", "resolv.conf"):                           "nameserver 127.0.0.1\n",
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The mount point is made on this machine if missing: remove what was
	// made, no more.
	var made []string
	for d := nodeDir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			made = append(made, d)
		}
	}
	t.Cleanup(func() {
		for _, d := range made {
			_ = os.Remove(d)
		}
	})
	section := "[" + containerd.ImagesTable(2) + ".registry]\n  config_path = " + strconv.Quote(nodeDir+"/certs.d") + "\n"
	c, err := containerd.Start(ctx, filepath.Join(t.TempDir(), "containerd"), containerd.Options{
		Registry:   &section,
		ConfigFile: filepath.Join(k3sDir, "config.toml"),
		NodeConfig: nodeDir + "/config.toml",
		Mounts:     map[string]string{nodeDir: k3sDir},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })

	if _, err := registry.PushImage(ctx, l.Reg, "k3s/app", "v1", registry.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	const ref = "registry.k3s.test/k3s/app:v1"
	if _, err := c.PullImage(ctx, ref, nil); err != nil {
		t.Fatalf("containerd with the k3s layout does not pull %s through its mirror: %v", ref, err)
	}

	run := func(profile string) agentcheck.Report {
		t.Helper()
		r := l.Agent(t, "check", "-o", "json", "--cri-endpoint", c.Endpoint(), "--node-name", "k3s-node",
			"--host-root", tree, "--runtime-profile", profile, "--proxy-from", "none")
		return r.JSON(t)
	}
	out := run("k3s")
	found := false
	for _, im := range out.Images {
		if im.Image != ref {
			continue
		}
		found = true
		if im.Status.Word() != "available" || len(im.Endpoints) == 0 || !strings.Contains(im.Endpoints[0].URL, l.Reg.Addr()) {
			t.Errorf("k3s profile: %s %s %q, endpoints %+v; want available through %s", ref, im.Status.Word(), im.Reason, im.Endpoints, l.Reg.Addr())
		}
	}
	if !found {
		t.Fatalf("k3s profile: %s not reported: %+v", ref, out.Images)
	}
	for _, im := range run("containerd").Images {
		if im.Image == ref && im.Status.Word() == "available" {
			t.Errorf("containerd profile (no /etc/containerd/config.toml under the host root) finds %s available: the k3s paths were not what made it work", ref)
		}
	}
}
