package web

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/risk"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

const (
	available   = pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE
	absent      = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
	unreachable = pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE
	upstream    = pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM
)

// hostile is what a compromised or buggy agent might put in a reason.
const hostile = `<script>alert("x")</script><img src=x onerror=alert(1)>`

// statusStore: node-a and node-c reach the registry, node-b does not;
// node-d went stale; an image is absent everywhere; an agent sent markup.
func statusStore() *state.Store {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := state.New(3*time.Minute, state.WithClock(func() time.Time { return now }))
	ok := &pullwatchv1.EndpointResult{Url: "https://registry.example", Role: upstream, Status: available, HttpStatus: 200, Latency: durationpb.New(25 * time.Millisecond)}
	notFound := &pullwatchv1.EndpointResult{Url: "https://registry.example", Role: upstream, Status: absent, HttpStatus: 404}
	down := &pullwatchv1.EndpointResult{Url: "https://registry.example", Role: upstream, Status: unreachable, Reason: "dial tcp 10.0.0.1:443: i/o timeout " + hostile}
	img := func(ref string, st pullwatchv1.ImageStatus, reason string, ep *pullwatchv1.EndpointResult) *pullwatchv1.ImageReport {
		return &pullwatchv1.ImageReport{Image: ref, Registry: "registry.example", Status: st, Reason: reason, InUse: true, Endpoints: []*pullwatchv1.EndpointResult{ep}}
	}
	snap := func(name string, images ...*pullwatchv1.ImageReport) {
		s.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: name, AgentVersion: "v0.1.0", Runtime: &pullwatchv1.Runtime{Name: "containerd", Version: "1.6.20"}}, Images: images})
	}
	snap("node-d", img("registry.example/app:1", available, "", ok))
	now = now.Add(5 * time.Minute)
	snap("node-a", img("registry.example/app:1", available, "", ok), img("registry.example/gone:1", absent, "manifest unknown", notFound))
	snap("node-b", img("registry.example/app:1", unreachable, "dial tcp 10.0.0.1:443: i/o timeout", down), img("registry.example/x"+hostile, unreachable, hostile, down))
	snap("node-c", img("registry.example/app:1", available, "", ok))
	// A second node says gone:1 is absent: one node's answer alone makes no image scope.
	snap("node-e", img("registry.example/gone:1", absent, "manifest unknown", notFound))
	s.StreamOpened()
	s.Attach("node-a", nil)
	return s
}

func serveStatus(t *testing.T) (*http.Response, string) {
	t.Helper()
	store := statusStore()
	page := NewStatusPage(analyzer.NewAnalyzer(store, nil, slog.New(slog.NewTextHandler(io.Discard, nil))), store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	page.now = func() time.Time { return time.Date(2026, 1, 2, 3, 9, 35, 0, time.UTC) }
	srv := httptest.NewServer(NewHandler(nil, &Readiness{}, page))
	t.Cleanup(srv.Close)
	resp, err := srv.Client().Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestStatusPage(t *testing.T) {
	resp, body := serveStatus(t)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d\n%s", resp.StatusCode, body)
	}
	for header, want := range map[string]string{
		"Content-Type":            "text/html; charset=utf-8",
		"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
		"X-Content-Type-Options":  "nosniff",
	} {
		if got := resp.Header.Get(header); !strings.HasPrefix(got, want) {
			t.Errorf("%s = %q, want it to start with %q", header, got, want)
		}
	}
	for _, want := range []string{
		"<b>4</b> live nodes · 4 fresh · 1 stale · 0 unregistered · 1 agents connected",
		// The failing images, with scope and reason.
		`registry.example/gone:1`, `<span class="badge scope-image">image</span>`, "manifest unknown",
		`<span class="badge scope-node">node</span>`,
		// The endpoint failure.
		`<td>1 of 3<small>node-b</small></td>`,
		// Grid: node-b is DOWN, in colour and in words, with the reason.
		`<td class="down" title="dial tcp 10.0.0.1:443: i/o timeout &lt;script&gt;`,
		`>DOWN<small>dial tcp 10.0.0.1:443: i/o timeout &lt;script&gt;aler…</small>`,
		`<td class="up">up<small>25 ms</small></td>`,
		// Freshness.
		`<span class="state-stale">stale</span><small>last report 5m30s ago</small>`,
		`<span class="state-fresh">fresh</span><small>last report 30s ago</small>`,
		"agent v0.1.0 · containerd 1.6.20",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Nodes with a down endpoint first, healthy ones last.
	order := regexp.MustCompile(`<td class="node mono">(node-[a-d])`).FindAllStringSubmatch(body, -1)
	var got []string
	for _, m := range order {
		got = append(got, m[1])
	}
	if strings.Join(got, ",") != "node-b,node-a,node-d,node-c" {
		t.Errorf("grid rows %v, want node-b (down), node-a (failing image), node-d (stale), node-c", got)
	}
}

func TestStatusPageEscapes(t *testing.T) {
	_, body := serveStatus(t)
	if !strings.Contains(body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;") {
		t.Error("the agent's markup is not shown escaped")
	}
	// Only the template's own elements, and links only to this server.
	allowed := map[string]bool{"html": true, "head": true, "meta": true, "title": true, "style": true, "body": true, "header": true,
		"h1": true, "h2": true, "footer": true, "p": true, "b": true, "section": true, "div": true, "table": true, "thead": true, "tbody": true,
		"tr": true, "th": true, "td": true, "small": true, "span": true, "a": true}
	for _, m := range regexp.MustCompile(`<([a-zA-Z][a-zA-Z0-9]*)`).FindAllStringSubmatch(body, -1) {
		if !allowed[strings.ToLower(m[1])] {
			t.Errorf("page has a <%s> element", m[1])
		}
	}
	for _, m := range regexp.MustCompile(`\b(href|src)="([^"]*)"`).FindAllStringSubmatch(body, -1) {
		if !strings.HasPrefix(m[2], "/") || strings.HasPrefix(m[2], "//") {
			t.Errorf("page references %s=%q", m[1], m[2])
		}
	}
	for _, external := range []string{"@import", "url("} {
		if strings.Contains(body, external) {
			t.Errorf("page's style loads something: %q", external)
		}
	}
}

func TestStatusPageEmpty(t *testing.T) {
	store := state.New(time.Minute)
	page := NewStatusPage(analyzer.NewAnalyzer(store, nil, slog.New(slog.NewTextHandler(io.Discard, nil))), store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rec := httptest.NewRecorder()
	page.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	for _, want := range []string{"No agent has reported yet.", "Every image is available", "Every registry endpoint answers"} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("empty page lacks %q", want)
		}
	}
}

func TestAge(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "just now"},
		{12 * time.Second, "12s ago"},
		{3*time.Minute + 5*time.Second, "3m05s ago"},
		{26 * time.Hour, "26h00m ago"},
		{72 * time.Hour, "3d ago"},
	}
	for _, tt := range tests {
		if got := age(tt.d); got != tt.want {
			t.Errorf("age(%s) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// TestStatusPageRisk: the risk section lists the containers at risk with
// why and since when, the safe count and the risky workloads; without an
// assessment (no Kubernetes API) there is no section.
func TestStatusPageRisk(t *testing.T) {
	store := statusStore()
	page := NewStatusPage(analyzer.NewAnalyzer(store, nil, slog.New(slog.NewTextHandler(io.Discard, nil))), store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	now := time.Date(2026, 1, 2, 3, 9, 35, 0, time.UTC)
	page.now = func() time.Time { return now }
	rep, _ := page.analyzer.Diagnosis(context.Background())
	if d, _ := page.build(rep); d.RiskKnown {
		t.Error("risk section without an assessment")
	}
	page.Risk = func() *risk.Assessment {
		return &risk.Assessment{
			Live: 3,
			AtRisk: []risk.Container{{Node: "node-b", Namespace: "shop", Pod: "web-1", Container: "app", Image: "registry.example/app:latest",
				Kind: "deployment", Workload: "web", PullPolicy: corev1.PullAlways, Status: pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE,
				Reason: risk.PullAlways, Since: now.Add(-5 * time.Minute)}},
			Safe:      []risk.Container{{}, {}},
			Workloads: []risk.Workload{{Namespace: "shop", Kind: "deployment", Name: "web", Container: "app", Image: "registry.example/app:latest", Nodes: []string{"node-b", "node-c"}}},
		}
	}
	var buf strings.Builder
	d, _ := page.build(rep)
	if err := statusTemplate.Execute(&buf, d); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Pods at risk", "shop/web-1", "pull_always", "pull policy Always", "2026-01-02 03:04:35 (5m", "2 container(s) use an image",
		"Workloads a new replica could not start", "2 of 3"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("status page lacks %q", want)
		}
	}
}
