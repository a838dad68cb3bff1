// Package fidelity_test is the differential matrix: for every runtime
// (Debian's containerd 1.6, and 1.7, 2.0 and 2.4 built from their modules)
// × node-config style × registry state, the node caches the images through
// a configuration that works, switches to the case's configuration,
// restarts the runtime, and then `crictl pull` — the runtime's own verdict
// — is compared with `pullwatch-agent check` on the same node files: the
// status and the reason's class must be equal. The registries sit on a
// non-loopback address of a network namespace (and, for the loopback
// cases, on that namespace's 127.0.0.1), so the runtime treats them as a
// node treats a remote registry. The matrix is written into
// docs/node-path.md.
package fidelity_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registryfront"
	"github.com/pullwatch/pullwatch/e2e/harness/runtimes"
)

// pullTimeout is how long the oracle's pull may take: a runtime that waits
// longer on an endpoint that accepted and never answered is taken as the
// kubelet's runtime-request-timeout ending the pull.
const pullTimeout = 8 * time.Second

// nodeConfig is a case's node files.
type nodeConfig struct {
	// files are node path → content, beside the CA files.
	files map[string]string
	// registry is the registry TOML appended to config.toml (full table
	// names); "" leaves the registry unconfigured.
	registry string
	// topLevel goes before config.toml's first table (imports).
	topLevel string
	// imagesExtra are more keys of the CRI images table.
	imagesExtra string
	// version overrides the runtime's config version (2 on 2.x: migrated).
	version int
	// configFile is config.toml's node path (default
	// /etc/containerd/config.toml).
	configFile string
}

// pull is one image a case pulls, with the kubelet's credentials when set.
type pull struct {
	front, image string
	user, pass   string // crictl --creds, and the node keyring for the agent
}

type fcase struct {
	name   string
	config func(e *env, rt runtimes.Containerd) nodeConfig
	modes  map[string]registryfront.Mode
	pulls  []pull
	// only limits the case to some runtimes (nil: all).
	only func(rt runtimes.Containerd) bool
}

// verdict is one side's answer for an image.
type verdict struct {
	class  string // status word, with the failure's kind for unreachable
	detail string // the runtime's error or the agent's reason
}

// row is one image of one case on one runtime.
type row struct {
	runtime, cse, image string
	runtimeV, agentV    verdict
}

func (r row) agree() bool { return r.runtimeV.class == r.agentV.class }

func TestFidelity(t *testing.T) {
	proc.RequireReal(t, "containerd", "docker-registry", "ip", "nsenter", "unshare", "iptables")
	rts, missing := runtimes.Containerds()
	if only := os.Getenv("PULLWATCH_FIDELITY_RUNTIMES"); only == "" && missing != "" {
		proc.SkipOrFail(t, "runtimes missing: "+missing)
	} else if only != "" {
		var keep []runtimes.Containerd
		for _, rt := range rts {
			if strings.Contains(","+only+",", ","+rt.Name+",") {
				keep = append(keep, rt)
			}
		}
		rts = keep
	}
	sh := newShared(t)
	cases := matrix()
	if only := os.Getenv("PULLWATCH_FIDELITY_CASES"); only != "" {
		// A regular expression over case names, e.g. "mTLS|header".
		re, err := regexp.Compile(only)
		if err != nil {
			t.Fatalf("PULLWATCH_FIDELITY_CASES=%q: %v", only, err)
		}
		var keep []fcase
		for _, c := range cases {
			if re.MatchString(c.name) {
				keep = append(keep, c)
			}
		}
		cases = keep
	}

	// Every runtime caches every image first (through a configuration that
	// works), then the deleted image goes.
	var nodes []*node
	for i, rt := range rts {
		n := &node{rt: rt, e: sh.node(t, fmt.Sprintf("n%d", i)), dir: filepath.Join(sh.dir, rt.Name)}
		n.seed(t)
		nodes = append(nodes, n)
	}
	sh.deleteGone(t)

	// The runtimes side by side, each its cases in turn.
	var mu sync.Mutex
	var rows []row
	start := time.Now()
	t.Run("matrix", func(t *testing.T) {
		for _, n := range nodes {
			t.Run(n.rt.Name, func(t *testing.T) {
				t.Parallel()
				for _, c := range cases {
					if c.only != nil && !c.only(n.rt) {
						continue
					}
					t.Run(c.name, func(t *testing.T) {
						got := n.run(t, c)
						for _, r := range got {
							if !r.agree() {
								t.Errorf("%s: the runtime says %s, the agent %s\n  runtime: %s\n  agent:   %s", r.image, r.runtimeV.class, r.agentV.class, r.runtimeV.detail, r.agentV.detail)
							}
						}
						mu.Lock()
						rows = append(rows, got...)
						mu.Unlock()
					})
				}
			})
		}
	})
	t.Logf("matrix: %d rows on %d runtimes in %s", len(rows), len(rts), time.Since(start).Round(time.Second))
	if err := writeDocs(rows, rts, cases); err != nil {
		t.Errorf("docs/node-path.md: %v", err)
	}
}

// node is one runtime's containerd: its content store is kept from case
// to case; its configuration is each case's own.
type node struct {
	rt  runtimes.Containerd
	e   *env
	dir string
	n   int
}

func (n *node) start(t testing.TB, cfg nodeConfig, root string) *containerd.Containerd {
	t.Helper()
	version := cfg.version
	if version == 0 {
		version = n.rt.ConfigVersion
	}
	configFile := cfg.configFile
	if configFile == "" {
		configFile = "/etc/containerd/config.toml"
	}
	mounts := map[string]string{}
	for _, d := range nodeDirs {
		mounts[d] = filepath.Join(root, d)
	}
	reg := cfg.registry
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := containerd.Start(ctx, n.dir, containerd.Options{
		Binary:        n.rt.Binary,
		Env:           n.rt.Env(),
		Netns:         n.e.ns.Netns(),
		ConfigVersion: version,
		Registry:      &reg,
		TopLevel:      cfg.topLevel,
		ImagesExtra:   cfg.imagesExtra,
		ConfigFile:    filepath.Join(root, configFile),
		NodeConfig:    configFile,
		Mounts:        mounts,
		LogLevel:      "debug",
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// seed caches every image through the seed configuration.
func (n *node) seed(t *testing.T) {
	t.Helper()
	root := filepath.Join(n.dir, "seed-root")
	if err := n.e.writeRoot(root, n.e.seedHosts()); err != nil {
		t.Fatal(err)
	}
	sec := containerd.ImagesTable(n.rt.ConfigVersion) + ".registry"
	c := n.start(t, nodeConfig{registry: fmt.Sprintf("[%s]\n  config_path = %q\n", sec, "/etc/containerd/certs.d")}, root)
	defer c.Stop()
	for _, p := range seedPulls() {
		ref := n.e.ref(p.front, p.image)
		if out, err := n.crictlPull(c, ref, p.user, p.pass); err != nil {
			t.Fatalf("%s: seed pull of %s: %v\n%s\n--- containerd log:\n%s", n.rt.Name, ref, err, out, proc.LogTail(c.LogFile(), 30))
		}
	}
	t.Logf("%s: cached %d images", n.rt.Name, len(seedPulls()))
}

func seedPulls() []pull {
	return []pull{
		{front: fUp, image: imApp}, {front: fUp, image: imGone}, {front: fUp, image: imUpOnly},
		{front: fUp, image: imOther}, {front: fUp, image: imDigest},
		{front: fAuth, image: imPrivate, user: regUser, pass: regPass},
		{front: fPlain, image: imApp}, {front: fLo, image: imApp}, {front: fLoPlain, image: imApp},
		{front: fMTLS, image: imApp}, {front: fGate, image: imApp},
		{front: fToken, image: imToken, user: regUser, pass: regPass},
	}
}

// crictlPull is the oracle: `crictl pull` through the node's containerd.
func (n *node) crictlPull(c *containerd.Containerd, ref, user, pass string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
	defer cancel()
	args := []string{"--runtime-endpoint", c.Endpoint(), "--image-endpoint", c.Endpoint(), "--timeout", "60s", "pull"}
	if user != "" {
		args = append(args, "--creds", user+":"+pass)
	}
	args = append(args, ref)
	cmd := exec.CommandContext(ctx, n.e.crictl, args...)
	cmd.Env = append(os.Environ(), "CONTAINER_RUNTIME_ENDPOINT=", "IMAGE_SERVICE_ENDPOINT=")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("the pull did not end within %s (the kubelet's runtime-request-timeout ends it): %w", pullTimeout, context.DeadlineExceeded)
	}
	return string(out), err
}

// run sets the case up on this runtime and compares both verdicts.
func (n *node) run(t *testing.T, c fcase) []row {
	n.n++
	root := filepath.Join(n.dir, fmt.Sprintf("case-%02d", n.n))
	cfg := c.config(n.e, n.rt)
	files := map[string]string{}
	for p, content := range cfg.files {
		files[p] = content
	}
	var keyring []pull
	for _, p := range c.pulls {
		if p.user != "" {
			keyring = append(keyring, p)
		}
	}
	if len(keyring) > 0 {
		p := keyring[0]
		files["/var/lib/kubelet/config.json"] = dockerConfig(n.e.host(p.front), p.user, p.pass)
	}
	if err := n.e.writeRoot(root, files); err != nil {
		t.Fatal(err)
	}
	for p, content := range cfg.files {
		t.Logf("%s:\n%s", p, content)
	}
	cd := n.start(t, cfg, root)
	defer func() {
		if t.Failed() {
			t.Logf("--- containerd log (tail):\n%s", proc.LogTail(cd.LogFile(), 40))
		}
		if err := cd.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	}()
	b, _ := os.ReadFile(filepath.Join(root, cfg.configFileOrDefault()))
	t.Logf("config.toml (registry part):\n%s", registryPart(string(b)))
	n.e.setModes(t, c.modes)
	defer n.e.setModes(t, nil)

	agent := n.check(t, cd, root, cfg)
	var rows []row
	for _, p := range c.pulls {
		ref := n.e.ref(p.front, p.image)
		out, err := n.crictlPull(cd, ref, p.user, p.pass)
		r := row{runtime: n.rt.Name, cse: c.name, image: p.front + "/" + p.image, runtimeV: runtimeVerdict(out, err)}
		im, ok := findImage(agent.Report, ref)
		if !ok {
			r.agentV = verdict{class: "missing", detail: "the agent did not report " + ref}
		} else {
			r.agentV = agentVerdict(im)
		}
		rows = append(rows, r)
		t.Logf("%-28s runtime %-22s agent %-22s %s", r.image, r.runtimeV.class, r.agentV.class, map[bool]string{true: "agree", false: "DISAGREE"}[r.agree()])
	}
	return rows
}

func (cfg nodeConfig) configFileOrDefault() string {
	if cfg.configFile == "" {
		return "/etc/containerd/config.toml"
	}
	return cfg.configFile
}

// registryPart is config.toml from the first registry-related line on.
func registryPart(s string) string {
	lines := strings.Split(s, "\n")
	var out []string
	for i, l := range lines {
		if strings.HasPrefix(l, "imports") || strings.HasPrefix(l, "version") {
			out = append(out, l)
		}
		if strings.Contains(l, ".registry") || strings.Contains(l, "use_local_image_pull") {
			out = append(out, lines[i:]...)
			break
		}
	}
	return strings.Join(out, "\n")
}

// check runs `pullwatch-agent check -o json` on the node: in its network
// namespace, the node's files under --host-root.
func (n *node) check(t testing.TB, cd *containerd.Containerd, root string, cfg nodeConfig) agentcheck.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"check", "-o", "json",
		"--cri-endpoint", cd.Endpoint(),
		"--host-root", root,
		"--containerd-config", cfg.configFileOrDefault(),
		"--node-name", "fidelity",
		"--proxy-from", "none",
		"--probe-timeout", "3s",
		"--log-level", "debug",
	}
	cmd := n.e.ns.Command(ctx, n.e.agentBin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + filepath.Join(root, "home")}
	r, err := agentcheck.Run(cmd)
	if err != nil {
		t.Fatalf("run pullwatch-agent: %v%s", err, r.Dump())
	}
	if err := r.Decode(); err != nil {
		t.Fatalf("%v%s", err, r.Dump())
	}
	if t.Failed() || os.Getenv("PULLWATCH_FIDELITY_VERBOSE") != "" {
		t.Logf("agent stderr:\n%s", r.Stderr)
	}
	return r
}

func findImage(rep agentcheck.Report, ref string) (agentcheck.Image, bool) {
	for _, im := range rep.Images {
		if im.Image == ref {
			return im, true
		}
	}
	return agentcheck.Image{}, false
}

// agentVerdict is the agent's status, with the kind of an unreachable.
func agentVerdict(im agentcheck.Image) verdict {
	status := im.Status.Word()
	detail := im.Reason
	if status == "unreachable" {
		return verdict{class: status + "/" + failureKind(detail), detail: detail}
	}
	return verdict{class: status, detail: detail}
}

// runtimeVerdict reads crictl's answer: the status the runtime's error
// means, with the kind of an unreachable.
func runtimeVerdict(out string, err error) verdict {
	if err == nil {
		return verdict{class: "available", detail: "pulled"}
	}
	msg := strings.TrimSpace(out)
	if i := strings.LastIndex(msg, "desc = "); i >= 0 {
		msg = msg[i+len("desc = "):]
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return verdict{class: "unreachable/timeout", detail: err.Error()}
	}
	for _, m := range []struct{ has, class string }{
		{"not a valid digest", "bad_image_format"},
		{"401 Unauthorized", "unauthorized"},
		{"insufficient_scope", "unauthorized"},
		{"authorization failed", "unauthorized"},
		{"403 Forbidden", "forbidden"},
		{"429 Too Many Requests", "rate_limited"},
		{"x509:", "unreachable/tls"},
		{"tls:", "unreachable/tls"},
		{"HTTP response to HTTPS client", "unreachable/tls"},
		{"connection refused", "unreachable/refused"},
		{"i/o timeout", "unreachable/timeout"},
		{"503 Service Unavailable", "unreachable/server"},
		// An HTTP answer no status word names (plain HTTP to a TLS port:
		// 400): the agent's word for it is unknown, with the answer.
		{"400 Bad Request", "unknown"},
		{"not found", "absent"},
	} {
		if strings.Contains(msg, m.has) {
			return verdict{class: m.class, detail: oneLine(msg)}
		}
	}
	return verdict{class: "failed/other", detail: oneLine(msg)}
}

// failureKind names what made an endpoint unreachable, from a reason.
func failureKind(reason string) string {
	switch {
	case strings.Contains(reason, "x509"), strings.Contains(reason, "certificate"), strings.Contains(reason, "tls:"),
		strings.Contains(reason, "HTTP response to HTTPS client"), strings.Contains(reason, "TLS"):
		return "tls"
	case strings.Contains(reason, "connection refused"):
		return "refused"
	case strings.Contains(reason, "timeout"), strings.Contains(reason, "timed out"), strings.Contains(reason, "deadline"),
		strings.Contains(reason, "did not answer"):
		return "timeout"
	case strings.Contains(reason, "answered 5"):
		return "server"
	}
	return "other"
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
