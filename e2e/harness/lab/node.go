package lab

// A node's registry path as its runtime takes it (hosts.toml mirrors, TLS,
// token auth, drift, platform, credentials): a test that needs its own
// hosts.toml setup gets a fresh containerd with its own config_path; the
// agent then reads that containerd's config.toml (--containerd-config)
// exactly as it would on a node.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// Node is a containerd the agent checks: a fresh one of the test's own,
// or the shared lab's.
type Node struct {
	Containerd *containerd.Containerd
	Bin        string
}

// FreshNode starts a containerd in the test's temp dir with opts: the
// hosts.toml files opts.Hosts (host → content) under its own config_path,
// and opts.SandboxImage (l.PauseImage()) when the test runs pods on it.
func (l *Lab) FreshNode(t testing.TB, opts containerd.Options) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := containerd.Start(ctx, filepath.Join(t.TempDir(), "containerd"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	})
	t.Logf("fresh containerd up in %s: config %s, config_path %s", time.Since(start).Round(time.Millisecond), c.ConfigPath(), c.CertsDir())
	for host, content := range opts.Hosts {
		t.Logf("hosts.toml for %s:\n%s", host, content)
	}
	return &Node{Containerd: c, Bin: l.Bin}
}

// Node is the shared lab's containerd (for cases with no hosts.toml).
func (l *Lab) Node() *Node { return &Node{Containerd: l.Containerd, Bin: l.Bin} }

// Registry starts a plain docker-registry (or with opts) for this test.
func Registry(t testing.TB, name string, opts registry.Options) *registry.Registry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := registry.Start(ctx, filepath.Join(t.TempDir(), name), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Stop() })
	t.Logf("registry %q on %s", name, r.URL())
	return r
}

// Push pushes the tiny image for repo:tag (opts shape its content) to
// each registry and returns its digest, the same everywhere.
func Push(t testing.TB, repo, tag string, opts registry.ImageOptions, regs ...*registry.Registry) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	digest := ""
	for _, r := range regs {
		d, err := registry.PushImage(ctx, r, repo, tag, opts)
		if err != nil {
			t.Fatal(err)
		}
		if digest != "" && d != digest {
			t.Fatalf("%s:%s has digest %s on %s but %s elsewhere", repo, tag, d, r.Addr(), digest)
		}
		digest = d
		t.Logf("pushed %s (%s)", r.Ref(repo, tag), d)
	}
	return digest
}

// Stopped stops the registries for the rest of a (sub)test, restarting
// them when it ends.
func Stopped(t testing.TB, regs ...*registry.Registry) {
	t.Helper()
	for _, r := range regs {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
		t.Logf("stopped registry %s", r.Addr())
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := r.Restart(ctx); err != nil {
				t.Errorf("restart registry %s: %v", r.Addr(), err)
			}
		})
	}
}

// Pull pulls ref into the node (auth may be nil).
func (n *Node) Pull(t testing.TB, ref string, auth *runtimeapi.AuthConfig) {
	t.Helper()
	if err := n.RuntimePull(ref, auth); err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd pulled %s", ref)
}

// RuntimePull is what the runtime gets if it pulls ref now.
func (n *Node) RuntimePull(ref string, auth *runtimeapi.AuthConfig) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := n.Containerd.PullImage(ctx, ref, auth)
	return err
}

// RemoveImages removes images from a shared node so later tests there
// do not see them (logging what it cannot remove).
func (n *Node) RemoveImages(t testing.TB, refs ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ref := range refs {
		if _, err := n.Containerd.Images().RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
			t.Logf("remove %s: %v", ref, err)
		}
	}
}

// ExpectRuntime pulls ref through the node's containerd and checks the
// runtime's answer is the agent's: the pull works exactly when the agent
// said available.
func (n *Node) ExpectRuntime(t testing.TB, ref string, auth *runtimeapi.AuthConfig, agentStatus string) {
	t.Helper()
	err := n.ExpectPull(t, ref, auth, agentStatus == "available", "the agent said "+agentStatus)
	if got := runtimeStatus(err); got != "" && got != agentStatus {
		t.Errorf("containerd's pull error says %s, the agent said %s: %v", got, agentStatus, err)
	}
}

// runtimeStatus reads the status word out of containerd's pull error when
// it is clear ("" when not): containerd reports the most relevant error of
// the hosts it tried, which is what the agent's status must be.
func runtimeStatus(err error) string {
	if err == nil {
		return "available"
	}
	msg := err.Error()
	for _, m := range []struct{ has, status string }{
		{"401 Unauthorized", "unauthorized"},
		{"insufficient_scope", "unauthorized"},
		{"403 Forbidden", "forbidden"},
		{"429 Too Many Requests", "rate_limited"},
		{"x509:", "unreachable"},
		{"connection refused", "unreachable"},
		{"no such host", "unreachable"},
		{"i/o timeout", "unreachable"},
		{"not found", "absent"},
	} {
		if strings.Contains(msg, m.has) {
			return m.status
		}
	}
	return ""
}

// ExpectPull checks whether containerd pulls ref now (auth may be nil).
func (n *Node) ExpectPull(t testing.TB, ref string, auth *runtimeapi.AuthConfig, want bool, why string) error {
	t.Helper()
	err := n.RuntimePull(ref, auth)
	who := "anonymously"
	if auth != nil {
		who = "with credentials"
	}
	switch {
	case err == nil && want:
		t.Logf("runtime agrees (%s): containerd pulls %s %s", why, ref, who)
	case err != nil && !want:
		t.Logf("runtime agrees (%s): containerd cannot pull %s %s: %v", why, ref, who, err)
	case err == nil:
		t.Errorf("%s, but containerd pulls %s %s", why, ref, who)
	default:
		t.Errorf("%s, but containerd cannot pull %s %s: %v", why, ref, who, err)
	}
	return err
}

// isolatedEnv is the agent's environment: no PULLWATCH_* settings,
// kubeconfig or proxies from the test's environment, and a HOME of its own
// so no docker config.json there lends the agent credentials (these tests
// are about a node without pull credentials).
func isolatedEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch uk := strings.ToUpper(k); {
		case strings.HasPrefix(k, "PULLWATCH_"), k == "KUBECONFIG", k == "HOME", k == "NODE_NAME", k == "DOCKER_CONFIG",
			strings.HasSuffix(uk, "_PROXY"):
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home)
}

// Check runs `pullwatch-agent check -o json` against the node, reading
// the node's containerd config.toml (extra args may override), and checks
// the exit status matches the report (0 exactly when all are available).
func (n *Node) Check(t testing.TB, extra ...string) agentcheck.Result {
	t.Helper()
	args := append([]string{"check", "-o", "json",
		"--cri-endpoint", n.Containerd.Endpoint(),
		"--containerd-config", n.Containerd.ConfigPath(),
		"--node-name", "nodepath",
		"--proxy-from", "none",
	}, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.Bin, checkout.AgentBinary), args...)
	cmd.Env = isolatedEnv(t.TempDir())
	start := time.Now()
	r, err := agentcheck.Run(cmd)
	if err != nil {
		t.Fatalf("run pullwatch-agent: %v%s", err, r.Dump())
	}
	if err := r.Decode(); err != nil {
		t.Fatalf("%v%s", err, r.Dump())
	}
	t.Logf("agent check: exit %d in %s, %d images", r.Code, time.Since(start).Round(time.Millisecond), len(r.Report.Images))
	if allAvailable := r.Report.AllAvailable(); allAvailable != (r.Code == 0) {
		t.Errorf("exit %d, but all images available = %v%s", r.Code, allAvailable, r.Dump())
	}
	return r
}
