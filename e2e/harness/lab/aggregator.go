package lab

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// AggregatorLabFlags are what StartAggregator passes unless extra says
// otherwise: the lab has no ServiceAccount tokens and no TLS material, so
// it says explicitly that the aggregator runs without them.
var AggregatorLabFlags = []string{"--auth=none", "--http-auth=none", "--insecure"}

// AgentLabFlags are what StartAgent passes unless extra says otherwise:
// plaintext to an --insecure aggregator.
var AgentLabFlags = []string{"--insecure"}

// withLabFlags prepends each of defaults whose flag extra does not set
// (--insecure also counts as set by --tls-dir or --ca-file, which
// exclude it).
func withLabFlags(defaults, extra []string) []string {
	set := func(name string) bool {
		for _, a := range extra {
			a = strings.TrimLeft(a, "-")
			if a == name || strings.HasPrefix(a, name+"=") {
				return true
			}
		}
		return false
	}
	var out []string
	for _, d := range defaults {
		name, _, _ := strings.Cut(strings.TrimLeft(d, "-"), "=")
		if set(name) || name == "insecure" && (set("tls-dir") || set("ca-file")) {
			continue
		}
		out = append(out, d)
	}
	return append(out, extra...)
}

// StartAggregator runs pullwatch-aggregator on free loopback ports and
// returns its gRPC and HTTP addresses. Without flags of their own in
// extra, it runs with AggregatorLabFlags.
func (l *Lab) StartAggregator(t testing.TB, extra ...string) (grpcAddr, httpAddr string, p *proc.Process) {
	t.Helper()
	gp, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	hp, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, httpAddr = fmt.Sprintf("127.0.0.1:%d", gp), fmt.Sprintf("127.0.0.1:%d", hp)
	p, err = proc.Start(proc.Spec{
		Name: "pullwatch-aggregator",
		Path: filepath.Join(l.Bin, checkout.AggregatorBinary),
		// Per-node series for every image and endpoint (not the scalable
		// defaults, failing): the tests look for available images and
		// answering endpoints per node. The compatibility families too,
		// per pod without the Kubernetes API (the default is off then);
		// extra may say otherwise.
		Args: append([]string{"--grpc-listen", grpcAddr, "--http-listen", httpAddr, "--node-image-series", "all", "--node-endpoint-series", "all", "--compat-metrics=current"},
			withLabFlags(AggregatorLabFlags, extra)...),
		LogFile: filepath.Join(t.TempDir(), "aggregator.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(5 * time.Second) })
	get := HTTPGet
	if slices.Contains(extra, "--http-tls") {
		// Ready as the kubelet's HTTPS probe sees it: no certificate
		// check (the test checks the certificate itself).
		get = func(url string) (int, string) {
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // readiness only, as the kubelet probes
			return httpGetWith(c, strings.Replace(url, "http://", "https://", 1))
		}
	}
	WaitFor(t, 20*time.Second, "aggregator ready", func() (bool, string) {
		code, body := get("http://" + httpAddr + "/readyz")
		return code == http.StatusOK, body
	}, p)
	return grpcAddr, httpAddr, p
}

// StartAgent runs the agent daemon (`pullwatch-agent run`) on the lab
// node, reporting to the aggregator at grpcAddr, with env and extra args;
// its log is kept with the test's artifacts, and it stops with the test.
// Without flags of their own in extra, it runs with AgentLabFlags.
func (l *Lab) StartAgent(t testing.TB, grpcAddr string, env []string, extra ...string) *proc.Process {
	t.Helper()
	p, err := proc.Start(proc.Spec{
		Name:    checkout.AgentBinary,
		Path:    filepath.Join(l.Bin, checkout.AgentBinary),
		Args:    append([]string{"run", "--aggregator", grpcAddr, "--cri-endpoint", l.Containerd.Endpoint()}, withLabFlags(AgentLabFlags, extra)...),
		Env:     env,
		LogFile: filepath.Join(t.TempDir(), "agent.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(5 * time.Second) })
	return p
}

// HTTPGet returns the status code and body of url (0 and the error when
// it does not answer).
func HTTPGet(url string) (int, string) { return httpGetWith(http.DefaultClient, url) }

func httpGetWith(c *http.Client, url string) (int, string) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// WaitFor polls cond until it holds; on timeout it fails with cond's last
// word and the logs of procs.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string), procs ...*proc.Process) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		time.Sleep(200 * time.Millisecond)
	}
	var logs strings.Builder
	for _, p := range procs {
		fmt.Fprintf(&logs, "\n--- %s log:\n%s", p.Name(), p.LogTail(40))
	}
	t.Fatalf("timed out after %s waiting for %s; last saw:\n%s%s", timeout, what, last, logs.String())
}

// GrepLines is the lines of body that start with prefix.
func GrepLines(body, prefix string) string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
