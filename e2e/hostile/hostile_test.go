package hostile_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pullwatch/pullwatch/agent/pkg/probe/probetest"
	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// hostileNode is a fresh containerd holding one real image (pulled from
// the lab's registry) under the names tags gives it, with the hosts.toml
// files hostsTOML; the image's reference at the lab registry and its
// manifest digest.
func hostileNode(t *testing.T, l *lab.Lab, hostsTOML map[string]string, tags func(digest string) []string) (n *lab.Node, healthy, digest string) {
	t.Helper()
	digest = lab.Push(t, "hostile/app", "v1", registry.ImageOptions{}, l.Reg)
	n = l.FreshNode(t, containerd.Options{Hosts: hostsTOML})
	healthy = l.Reg.Ref("hostile/app", "v1")
	n.Pull(t, healthy, nil)
	names := tags(digest)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for rest := names; len(rest) > 0; {
		batch := rest[:min(len(rest), 50)]
		rest = rest[len(batch):]
		ctr(t, n, append([]string{"images", "tag", "--force", healthy}, batch...)...)
	}
	// The CRI plugin learns of ctr's tags from containerd's events, a
	// moment later: wait until it lists them all, as the agent reads it.
	err := proc.Poll(ctx, 30*time.Second, 100*time.Millisecond, func() error {
		resp, err := n.Containerd.Images().ListImages(ctx, &runtimeapi.ListImagesRequest{})
		if err != nil {
			return err
		}
		listed := map[string]bool{}
		for _, im := range resp.GetImages() {
			for _, tag := range im.GetRepoTags() {
				listed[tag] = true
			}
		}
		for _, name := range names {
			if !listed[name] {
				return fmt.Errorf("the CRI does not list %s yet", name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, healthy, digest
}

func ctr(t *testing.T, n *lab.Node, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args = append([]string{"--address", n.Containerd.Socket(), "--namespace", "k8s.io"}, args...)
	if out, err := exec.CommandContext(ctx, "ctr", args...).CombinedOutput(); err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func startHostile(t *testing.T, m probetest.Mode, addr string) *probetest.Hostile {
	t.Helper()
	h, err := probetest.Start(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestHostileRegistries: `pullwatch-agent check` against one hostile
// registry of every kind: every probe ends within --probe-timeout with
// the right status and reason, every string of the report is valid UTF-8
// within the report's limits, and the healthy image stays available.
func TestHostileRegistries(t *testing.T) {
	l := lab.Need(t)
	const timeout = 2 * time.Second
	want := map[probetest.Mode]struct{ status, reason string }{
		probetest.HangHeaders:  {"unreachable", "timeout after 2s"},
		probetest.EndlessBody:  {"unknown", "over 1 MiB"},
		probetest.HugeHeaders:  {"unreachable", "headers exceeded 65536 bytes"},
		probetest.RedirectLoop: {"unreachable", "stopped after 10 redirects"},
		probetest.WrongDigest:  {"bad_image_format", "digest mismatch"},
		probetest.TLSMismatch:  {"unreachable", "certificate"},
		probetest.HangingToken: {"unreachable", "timeout after 2s"},
		probetest.InvalidUTF8:  {"unknown", "418"},
		probetest.Oversized:    {"rate_limited", "429"},
		probetest.Silent:       {"unreachable", "timeout after 2s"},
	}
	servers := map[probetest.Mode]*probetest.Hostile{}
	hostsTOML := map[string]string{}
	for m := range want {
		h := startHostile(t, m, "127.0.0.1:0")
		servers[m] = h
		if m == probetest.TLSMismatch {
			ca := filepath.Join(t.TempDir(), "ca.pem")
			if err := os.WriteFile(ca, h.CAPEM, 0o644); err != nil {
				t.Fatal(err)
			}
			hostsTOML[h.Addr] = fmt.Sprintf("server = %q\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n", "https://"+h.Addr, "https://"+h.Addr, ca)
		}
	}
	// The digest-pinned image is an image of its own that the node has
	// under no tag, so that the agent checks it by its digest.
	pinnedDigest := lab.Push(t, "hostile/pinned", "v1", registry.ImageOptions{Files: map[string][]byte{"pinned": []byte("1")}}, l.Reg)
	name := func(m probetest.Mode) string {
		if m == probetest.WrongDigest {
			return servers[m].Addr + "/hostile/" + string(m) + "@" + pinnedDigest
		}
		return servers[m].Addr + "/hostile/" + string(m) + ":v1"
	}
	n, healthy, _ := hostileNode(t, l, hostsTOML, func(string) []string {
		var names []string
		for m := range want {
			if m != probetest.WrongDigest {
				names = append(names, name(m))
			}
		}
		return names
	})
	pinnedTag := l.Reg.Ref("hostile/pinned", "v1")
	n.Pull(t, pinnedTag, nil)
	ctr(t, n, "images", "tag", "--force", pinnedTag, name(probetest.WrongDigest))
	ctr(t, n, "images", "rm", pinnedTag)
	start := time.Now()
	r := n.Check(t, "--probe-timeout", timeout.String())
	t.Logf("check with %d hostile registries took %s", len(want), time.Since(start).Round(time.Millisecond))
	r.Expect(t, healthy, agentcheck.Want{Status: "available"})
	for m, w := range want {
		im := r.Expect(t, name(m), agentcheck.Want{Status: w.status, ReasonHas: []string{w.reason}})
		for _, ep := range im.Endpoints {
			if ep.LatencySeconds > (timeout + time.Second).Seconds() {
				t.Errorf("%s: %s took %.2fs, --probe-timeout is %s", m, ep.URL, ep.LatencySeconds, timeout)
			}
		}
	}
	assertSanitized(t, r)
}

// assertSanitized: every string of the report is valid UTF-8 within its
// limit.
func assertSanitized(t *testing.T, r agentcheck.Result) {
	t.Helper()
	check := func(what, s string, limit int) {
		if !utf8.ValidString(s) || len(s) > limit {
			t.Errorf("%s not sanitized: %d bytes (limit %d), valid UTF-8 %v: %.200q", what, len(s), limit, utf8.ValidString(s), s)
		}
	}
	for _, im := range r.Report.Images {
		check(im.Image+" reason", im.Reason, pb.MaxReason)
		check(im.Image+" registry_digest", im.RegistryDigest, pb.MaxShort)
		for _, ep := range im.Endpoints {
			check(ep.URL+" reason", ep.Reason, pb.MaxReason)
			check(ep.URL+" ratelimit_remaining", ep.RateLimitRemaining, pb.MaxShort)
		}
	}
}

// TestHostileDroppedRound: 200 images on 10 registries that never answer
// (listeners that never accept: connections sit in the kernel's backlog,
// as behind a firewall that drops) and one healthy image. The round ends
// within 2 × --probe-timeout, and the healthy image is checked at once,
// not after the hung ones.
func TestHostileDroppedRound(t *testing.T) {
	l := lab.Need(t)
	const timeout = 3 * time.Second
	var silent []*probetest.Hostile
	for i := range 10 {
		silent = append(silent, startHostile(t, probetest.Silent, fmt.Sprintf("127.0.0.%d:0", 20+i)))
	}
	n, healthy, _ := hostileNode(t, l, nil, func(string) []string {
		var names []string
		for i := range 200 {
			names = append(names, fmt.Sprintf("%s/dropped/app%03d:v1", silent[i%len(silent)].Addr, i))
		}
		return names
	})
	start := time.Now()
	r := n.Check(t, "--probe-timeout", timeout.String())
	took := time.Since(start)
	var slowest float64
	hung := 0
	for _, im := range r.Report.Images {
		if im.Image == healthy {
			continue
		}
		hung++
		if im.Status != pb.ImageStatus_IMAGE_STATUS_UNREACHABLE {
			t.Errorf("%s: %s %q, want unreachable", im.Image, im.Status.Word(), im.Reason)
		}
		for _, ep := range im.Endpoints {
			slowest = max(slowest, ep.LatencySeconds)
		}
	}
	h := r.Expect(t, healthy, agentcheck.Want{Status: "available"})
	healthyLatency := h.Endpoints[0].LatencySeconds
	t.Logf("%d images on 10 dropping registries + 1 healthy: check took %s (process start, CRI and probes); slowest probe %.2fs, healthy image's probe %.3fs; --probe-timeout %s",
		hung, took.Round(time.Millisecond), slowest, healthyLatency, timeout)
	if hung != 200 {
		t.Errorf("%d hung images in the report, want 200", hung)
	}
	// A probe's latency counts from the moment it was asked for, waiting
	// for slots included: the round's probes all end within 2 × timeout.
	if slowest > (2 * timeout).Seconds() {
		t.Errorf("slowest probe %.2fs, over 2 × --probe-timeout (%s)", slowest, timeout)
	}
	if healthyLatency > timeout.Seconds() {
		t.Errorf("the healthy image's probe took %.2fs: it waited for the hung registries", healthyLatency)
	}
}

// TestBrokenNodeConfig: a hosts.toml that names a CA file that does not
// exist, and a node keyring (config.json) that does not parse. The
// registry of the broken hosts.toml has its images unknown with a reason
// naming the file; every other registry is still probed; an image that is
// not available says that the credentials could not be read, naming the
// file.
func TestBrokenNodeConfig(t *testing.T) {
	l := lab.Need(t)
	broken := startHostile(t, probetest.WrongDigest, "127.0.0.1:0")
	absent := startHostile(t, probetest.RedirectLoop, "127.0.0.1:0")
	missingCA := filepath.Join(t.TempDir(), "no-such-ca.pem")
	hostsTOML := map[string]string{
		broken.Addr: fmt.Sprintf("server = %q\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n", "https://"+broken.Addr, "https://"+broken.Addr, missingCA),
	}
	brokenRef := broken.Addr + "/broken/app:v1"
	otherRef := absent.Addr + "/other/app:v1"
	n, healthy, _ := hostileNode(t, l, hostsTOML, func(string) []string { return []string{brokenRef, otherRef} })
	keyring := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(keyring, []byte("{\"auths\": {\"x\": \xff garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := n.Check(t, "--probe-timeout", "2s", "--docker-config", keyring)
	r.Expect(t, healthy, agentcheck.Want{Status: "available"})
	r.Expect(t, brokenRef, agentcheck.Want{Status: "unknown", ReasonHas: []string{missingCA}})
	r.Expect(t, otherRef, agentcheck.Want{Status: "unreachable", ReasonHas: []string{"redirects", keyring}})
	assertSanitized(t, r)

	// A containerd config.toml that does not parse concerns every
	// registry: every image is unknown naming the file and the line, and
	// the agent still reports (exit 1, not a setup error).
	conf := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(conf, []byte("version = 2\n[plugins\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = n.Check(t, "--probe-timeout", "2s", "--containerd-config", conf)
	r.Expect(t, healthy, agentcheck.Want{Status: "unknown", ReasonHas: []string{conf, "line 2"}})
}

// TestHostileRun: the agent daemon against a real aggregator while a
// registry answers with a status line that is not UTF-8 and another with
// oversized fields: the aggregator gets and keeps the node's report, every
// image of it, and refuses nothing.
func TestHostileRun(t *testing.T) {
	l := lab.Need(t)
	bad := startHostile(t, probetest.InvalidUTF8, "127.0.0.1:0")
	big := startHostile(t, probetest.Oversized, "127.0.0.1:0")
	refs := []string{bad.Addr + "/hostile/utf8:v1", big.Addr + "/hostile/oversized:v1"}
	n, healthy, _ := hostileNode(t, l, nil, func(string) []string { return refs })
	grpcAddr, httpAddr, agg := l.StartAggregator(t)
	hp, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	agentHTTP := net.JoinHostPort("127.0.0.1", fmt.Sprint(hp))
	agent, err := proc.Start(proc.Spec{
		Name: checkout.AgentBinary,
		Path: filepath.Join(n.Bin, checkout.AgentBinary),
		Args: []string{"run", "--aggregator", grpcAddr, "--cri-endpoint", n.Containerd.Endpoint(), "--containerd-config", n.Containerd.ConfigPath(),
			"--node-name", "hostile-node", "--proxy-from", "none", "--probe-timeout", "2s", "--interval", "5s", "--events=false", "--http-listen", agentHTTP,
			"--insecure"}, // the lab aggregator runs without TLS (lab.StartAggregator)
		LogFile: filepath.Join(t.TempDir(), "agent.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Stop(5 * time.Second) })
	want := []string{healthy, refs[0], refs[1]}
	lab.WaitFor(t, 45*time.Second, "the aggregator has every image of the hostile node", func() (bool, string) {
		_, body := lab.HTTPGet("http://" + httpAddr + "/metrics")
		for _, ref := range want {
			if !strings.Contains(body, `image="`+ref+`"`) || !strings.Contains(body, `node="hostile-node"`) {
				return false, lab.GrepLines(body, "pullwatch_node_image_status")
			}
		}
		return true, ""
	}, agg, agent)
	_, body := lab.HTTPGet("http://" + httpAddr + "/metrics")
	for _, line := range strings.Split(lab.GrepLines(body, "pullwatch_reports_rejected_total")+"\n"+lab.GrepLines(body, "pullwatch_image_reports_refused_total"), "\n") {
		if line != "" && !strings.HasSuffix(line, " 0") {
			t.Errorf("the aggregator refused something: %s", line)
		}
	}
	if code, body := lab.HTTPGet("http://" + agentHTTP + "/healthz"); code != 200 {
		t.Errorf("agent /healthz: %d %s", code, body)
	}
}
