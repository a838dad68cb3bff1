package health

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pullwatch/pullwatch/agent/pkg/report"
	"github.com/pullwatch/pullwatch/pkg/buildinfo"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

func TestProbes(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	connected := false
	m := New(time.Minute, func() bool { return connected })
	m.now = func() time.Time { return now }
	m.started = now
	h := m.Handler()

	steps := []struct {
		do              func()
		healthz, readyz int
		why             string
	}{
		{func() {}, 200, 503, "no round finished yet"},
		{func() {
			m.Round(time.Second, &report.Node{Images: []report.Image{{Outcome: report.Outcome{Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE}}, {Outcome: report.Outcome{Status: pb.ImageStatus_IMAGE_STATUS_ABSENT}}}}, nil)
		}, 200, 200, ""}, // ready without the aggregator: readiness is not the stream's
		{func() { connected = true }, 200, 200, ""},
		{func() { now = now.Add(3 * time.Minute); m.Round(time.Second, nil, errors.New("CRI down")) }, 200, 200, ""},
		{func() { now = now.Add(2 * time.Minute) }, 503, 200, ""},
		{m.Stopping, 503, 503, "shutting down"},
	}
	for i, s := range steps {
		s.do()
		hc, body := get(t, h, "/healthz")
		rc, rbody := get(t, h, "/readyz")
		if hc != s.healthz || rc != s.readyz || !strings.Contains(body+rbody, s.why) {
			t.Fatalf("step %d: healthz %d %q, readyz %d %q; want %d, %d, %q", i, hc, body, rc, rbody, s.healthz, s.readyz, s.why)
		}
	}
	if got := testutil.ToFloat64(m.rounds.WithLabelValues("error")); got != 1 {
		t.Errorf("error rounds = %v", got)
	}
	if got := testutil.ToFloat64(m.images.WithLabelValues("absent")); got != 1 {
		t.Errorf("absent images = %v", got)
	}
	if problems, err := testutil.GatherAndLint(m.registry); err != nil || len(problems) > 0 {
		t.Errorf("metric lint: %v %v", problems, err)
	}
	m.ReportBuild(buildinfo.Info{Version: "v0.3.1", Revision: "abc123", GoVersion: "go1.26.6"})
	code, body := get(t, h, "/metrics")
	if want := `pullwatch_build_info{goversion="go1.26.6",revision="abc123",version="v0.3.1"} 1`; !strings.Contains(body, want) {
		t.Errorf("/metrics lacks %s", want)
	}
	if code != 200 || !strings.Contains(body, "pullwatch_agent_stream_connected 1") {
		t.Errorf("/metrics %d:\n%s", code, body)
	}
}

// TestReadyWithoutAggregator: an agent whose stream never comes up (an
// aggregator outage) is ready once it has a round, and says on /metrics
// that the stream is down.
func TestReadyWithoutAggregator(t *testing.T) {
	m := New(time.Minute, func() bool { return false })
	h := m.Handler()
	m.Round(time.Second, &report.Node{}, nil)
	if code, body := get(t, h, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with the aggregator unreachable: %d %q, want 200", code, body)
	}
	if _, body := get(t, h, "/metrics"); !strings.Contains(body, "pullwatch_agent_stream_connected 0") {
		t.Errorf("/metrics does not say the stream is down:\n%s", body)
	}
}
