package aggregator_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// chromium returns Debian's headless-capable Chromium, or skips (fails
// with PULLWATCH_REQUIRE_REAL=1).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	proc.SkipOrFail(t, "needs chromium (apt-get install chromium) to render the status page")
	return ""
}

// runChromium runs headless Chromium on url with extra (--dump-dom or
// --screenshot=...) and returns its stdout.
func runChromium(t *testing.T, bin, url string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run",
		"--user-data-dir=" + t.TempDir(), "--window-size=1366,900",
	}, extra...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) || ctx.Err() != nil {
			t.Fatalf("chromium %s: %v (%v)\nstderr:\n%s", strings.Join(extra, " "), err, ctx.Err(), tail(stderr.String(), 30))
		}
		t.Fatalf("chromium: %v", err)
	}
	return stdout.String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestAggregatorStatusPage: the aggregator's status page, rendered by a
// real headless Chromium, shows the lab node failing to reach the stopped
// registry (in words and colour) while two more nodes (reported over the
// aggregator's gRPC API: the lab has one containerd) reach it, so the
// failure is node-scoped; the absent image is listed with scope image and
// the registry's reason. The screenshot is saved with the test output.
func TestAggregatorStatusPage(t *testing.T) {
	l := lab.Need(t)
	bin := chromium(t)
	const node = "status-node"
	s := l.StartScenario(t, "aggstatus", node)
	lab.ReportSnapshot(t, s.GRPCAddr, s.SyntheticNode(t, "status-node-b", "zone-b", true))
	lab.ReportSnapshot(t, s.GRPCAddr, s.SyntheticNode(t, "status-node-c", "zone-c", true))

	// The diagnosis: the stopped registry fails from one node of three.
	wantScope := regexp.MustCompile(fmt.Sprintf(`(?m)^pullwatch_registry_failure\{endpoint="[^"]+",registry=%q,scope="node"\} 1$`, s.DeadRegistry))
	lab.WaitFor(t, 30*time.Second, "a node-scope registry failure", func() (bool, string) {
		_, body := lab.HTTPGet(s.MetricsURL())
		return wantScope.MatchString(body), lab.GrepLines(body, "pullwatch_registry_failure") + "\n" + lab.GrepLines(body, "pullwatch_image_failure")
	}, s.Agg, s.Agent)

	dom := runChromium(t, bin, s.PageURL(), "--dump-dom")
	// The grid row of the lab node: first (it has a down endpoint), with
	// a DOWN cell that carries the refusal.
	row := regexp.MustCompile(`(?s)<tr class="fresh"><td class="node mono">` + regexp.QuoteMeta(node) + `</td>.*?</tr>`).FindString(dom)
	if row == "" {
		t.Fatalf("the grid has no row for %s:\n%s", node, dom)
	}
	for _, want := range []string{`<td class="down" title="dial tcp ` + s.DeadRegistry, `>DOWN<small>`, `<td class="up">up<small>`} {
		if !strings.Contains(row, want) {
			t.Errorf("row of %s lacks %q:\n%s", node, want, row)
		}
	}
	firstRow := regexp.MustCompile(`<td class="node mono">([^<]+)`).FindStringSubmatch(dom)
	if firstRow == nil || firstRow[1] != node {
		t.Errorf("first grid row is %v, want the failing node %s first", firstRow, node)
	}
	for _, want := range []string{
		// The other nodes, healthy, with their zones.
		`status-node-b<small>zone zone-b</small></td>`,
		// Failing images with scope and reason.
		s.Gone, `<span class="badge scope-image">image</span>`, `manifest unknown`,
		s.Dead, `<span class="badge scope-node">node</span>`,
		// Freshness.
		`<span class="state-fresh">fresh</span><small>last report`,
		"<b>3</b> live nodes",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("page lacks %q", want)
		}
	}

	out, err := lab.OutDir()
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(out, "aggregator-status.png")
	runChromium(t, bin, s.PageURL(), "--screenshot="+shot, "--hide-scrollbars")
	st, err := os.Stat(shot)
	if err != nil || st.Size() < 10_000 {
		t.Fatalf("screenshot %s: %v (size %v)", shot, err, st)
	}
	if err := os.WriteFile(filepath.Join(out, "aggregator-status.html"), []byte(dom), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("status page screenshot: %s", shot)
}
