package e2e

// Helpers for the TestNodePath* tests: a node's registry path as its
// runtime takes it (hosts.toml mirrors, TLS, token auth, drift, platform).
// Each test that needs its own hosts.toml setup gets a fresh containerd
// with its own config_path; the agent then reads that containerd's
// config.toml (--containerd-config) exactly as it would on a node.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// npReport is the part of `check -o json` the node-path tests read.
type npReport struct {
	Node   string    `json:"node"`
	Images []npImage `json:"images"`
}

type npImage struct {
	Image          string       `json:"image"`
	Digest         string       `json:"digest"`
	Status         string       `json:"status"`
	Reason         string       `json:"reason"`
	Degraded       bool         `json:"degraded"`
	Drifted        bool         `json:"drifted"`
	RegistryDigest string       `json:"registry_digest"`
	Endpoints      []npEndpoint `json:"endpoints"`
}

type npEndpoint struct {
	URL            string  `json:"url"`
	Role           string  `json:"role"`
	Status         string  `json:"status"`
	Reason         string  `json:"reason"`
	HTTPStatus     int     `json:"http_status"`
	Skipped        bool    `json:"skipped"`
	LatencySeconds float64 `json:"latency_seconds"`
}

// npNode is a containerd the agent checks: a fresh one of the test's own,
// or the shared lab's.
type npNode struct {
	c   *containerd.Containerd
	bin string
}

// npFreshNode starts a containerd in the test's temp dir with the given
// hosts.toml files (host → content) under its own config_path.
func npFreshNode(t *testing.T, l *lab, hosts map[string]string) *npNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	c, err := containerd.Start(ctx, filepath.Join(t.TempDir(), "containerd"), containerd.Options{Hosts: hosts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	})
	t.Logf("fresh containerd up in %s: config %s, config_path %s", time.Since(start).Round(time.Millisecond), c.ConfigPath(), c.CertsDir())
	for host, content := range hosts {
		t.Logf("hosts.toml for %s:\n%s", host, content)
	}
	return &npNode{c: c, bin: l.bin}
}

// npLabNode is the shared lab's containerd (for cases with no hosts.toml).
func npLabNode(l *lab) *npNode { return &npNode{c: l.containerd, bin: l.bin} }

// npRegistry starts a plain docker-registry (or with opts) for this test.
func npRegistry(t *testing.T, name string, opts registry.Options) *registry.Registry {
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

// npPush pushes the tiny image for repo:tag (opts shape its content) to
// each registry and returns its digest, the same everywhere.
func npPush(t *testing.T, repo, tag string, opts registry.ImageOptions, regs ...*registry.Registry) string {
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

// pull pulls ref into the node (auth may be nil).
func (n *npNode) pull(t *testing.T, ref string, auth *runtimeapi.AuthConfig) {
	t.Helper()
	if err := n.runtimePull(ref, auth); err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd pulled %s", ref)
}

// runtimePull is what the runtime gets if it pulls ref now.
func (n *npNode) runtimePull(ref string, auth *runtimeapi.AuthConfig) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := n.c.PullImage(ctx, ref, auth)
	return err
}

// expectRuntime pulls ref through the node's containerd and checks the
// runtime's answer is the agent's: the pull works exactly when the agent
// said available.
func (n *npNode) expectRuntime(t *testing.T, ref string, auth *runtimeapi.AuthConfig, agentStatus string) {
	t.Helper()
	err := n.expectPull(t, ref, auth, agentStatus == "available", "the agent said "+agentStatus)
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

// expectPull checks whether containerd pulls ref now (auth may be nil).
func (n *npNode) expectPull(t *testing.T, ref string, auth *runtimeapi.AuthConfig, want bool, why string) error {
	t.Helper()
	err := n.runtimePull(ref, auth)
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

// npRun is one `check -o json` run.
type npRun struct {
	report         npReport
	stdout, stderr string
	code           int
}

// dump is the agent's JSON and stderr, for failure messages.
func (r npRun) dump() string {
	return fmt.Sprintf("\n--- agent exit %d, JSON:\n%s\n--- agent stderr:\n%s", r.code, r.stdout, r.stderr)
}

// npEnv is the agent's environment: no PULLWATCH_* settings, kubeconfig
// or proxies from the test's environment, and a HOME of its own so no
// docker config.json there lends the agent credentials (these tests are
// about a node without pull credentials).
func npEnv(home string) []string {
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

// check runs `pullwatch-agent check -o json` against the node, reading
// the node's containerd config.toml (extra args may override), and checks
// the exit status matches the report (0 exactly when all are available).
func (n *npNode) check(t *testing.T, extra ...string) npRun {
	t.Helper()
	args := append([]string{"check", "-o", "json",
		"--cri-endpoint", n.c.Endpoint(),
		"--containerd-config", n.c.ConfigPath(),
		"--node-name", "nodepath",
		"--proxy-from", "none",
	}, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.bin, "pullwatch-agent"), args...)
	cmd.Env = npEnv(t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := npRun{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run pullwatch-agent: %v%s", err, r.dump())
	}
	if err := json.Unmarshal(stdout.Bytes(), &r.report); err != nil {
		t.Fatalf("check -o json printed no JSON: %v%s", err, r.dump())
	}
	t.Logf("agent check: exit %d in %s, %d images", r.code, time.Since(start).Round(time.Millisecond), len(r.report.Images))
	allAvailable := true
	for _, im := range r.report.Images {
		allAvailable = allAvailable && im.Status == "available"
	}
	if allAvailable != (r.code == 0) {
		t.Errorf("exit %d, but all images available = %v%s", r.code, allAvailable, r.dump())
	}
	return r
}

// image finds ref in the report (failing the test with the report if absent).
func (r npRun) image(t *testing.T, ref string) npImage {
	t.Helper()
	for _, im := range r.report.Images {
		if im.Image == ref {
			return im
		}
	}
	t.Fatalf("%s is not in the report%s", ref, r.dump())
	return npImage{}
}

// wantImage is what a test expects of one image; zero fields of an
// endpoint are not checked, except skipped.
type wantImage struct {
	status    string
	degraded  bool
	drifted   bool
	reasonHas []string
	// endpoints in the runtime's order; nil: not checked.
	endpoints []wantEndpoint
}

type wantEndpoint struct {
	url       string // full URL, or a suffix starting with "://"
	role      string
	status    string
	skipped   bool
	http      int
	reasonHas string
}

// expect logs what the agent said about ref and checks it against w.
func (r npRun) expect(t *testing.T, ref string, w wantImage) npImage {
	t.Helper()
	im := r.image(t, ref)
	t.Logf("%s: status=%s degraded=%v drifted=%v digest=%s registry_digest=%s reason=%q",
		ref, im.Status, im.Degraded, im.Drifted, im.Digest, im.RegistryDigest, im.Reason)
	for i, ep := range im.Endpoints {
		t.Logf("  endpoint %d: %s role=%s status=%s http=%d skipped=%v latency=%.3fs reason=%q",
			i, ep.URL, ep.Role, ep.Status, ep.HTTPStatus, ep.Skipped, ep.LatencySeconds, ep.Reason)
	}
	if w.status == "" {
		return im
	}
	var bad []string
	if im.Status != w.status {
		bad = append(bad, fmt.Sprintf("status %q, want %q", im.Status, w.status))
	}
	if im.Degraded != w.degraded {
		bad = append(bad, fmt.Sprintf("degraded %v, want %v", im.Degraded, w.degraded))
	}
	if im.Drifted != w.drifted {
		bad = append(bad, fmt.Sprintf("drifted %v, want %v", im.Drifted, w.drifted))
	}
	for _, s := range w.reasonHas {
		if !strings.Contains(im.Reason, s) {
			bad = append(bad, fmt.Sprintf("reason %q lacks %q", im.Reason, s))
		}
	}
	if w.endpoints != nil {
		if len(im.Endpoints) != len(w.endpoints) {
			bad = append(bad, fmt.Sprintf("%d endpoints, want %d", len(im.Endpoints), len(w.endpoints)))
		} else {
			for i, we := range w.endpoints {
				bad = append(bad, checkEndpoint(i, im.Endpoints[i], we)...)
			}
		}
	}
	if len(bad) > 0 {
		t.Errorf("%s:\n  %s%s", ref, strings.Join(bad, "\n  "), r.dump())
	}
	return im
}

func checkEndpoint(i int, ep npEndpoint, w wantEndpoint) []string {
	var bad []string
	f := func(format string, a ...any) {
		bad = append(bad, fmt.Sprintf("endpoint %d (%s): ", i, ep.URL)+fmt.Sprintf(format, a...))
	}
	switch {
	case w.url == "":
	case strings.HasPrefix(w.url, "://"):
		if !strings.HasSuffix(ep.URL, w.url) {
			f("URL does not end in %s", w.url)
		}
	case ep.URL != w.url:
		f("URL, want %s", w.url)
	}
	if w.role != "" && ep.Role != w.role {
		f("role %q, want %q", ep.Role, w.role)
	}
	if w.status != "" && ep.Status != w.status {
		f("status %q, want %q", ep.Status, w.status)
	}
	if ep.Skipped != w.skipped {
		f("skipped %v, want %v", ep.Skipped, w.skipped)
	}
	if w.http != 0 && ep.HTTPStatus != w.http {
		f("http_status %d, want %d", ep.HTTPStatus, w.http)
	}
	if w.reasonHas != "" && !strings.Contains(ep.Reason, w.reasonHas) {
		f("reason %q lacks %q", ep.Reason, w.reasonHas)
	}
	if !ep.Skipped && ep.Status != "" && ep.LatencySeconds <= 0 {
		f("latency %v for an endpoint that was asked", ep.LatencySeconds)
	}
	return bad
}

// npStopped stops the registries for the rest of a (sub)test, restarting
// them when it ends.
func npStopped(t *testing.T, regs ...*registry.Registry) {
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
