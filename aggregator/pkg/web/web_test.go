package web

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/metrics"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

// newTestServer serves the handler on a real loopback listener.
func newTestServer(t *testing.T, ready *Readiness) *httptest.Server {
	t.Helper()
	store := state.New(time.Minute)
	store.ApplySnapshot(&pullwatchv1.NodeSnapshot{
		Node:   &pullwatchv1.Node{Name: "node-a"},
		Images: []*pullwatchv1.ImageReport{{Image: "docker.io/library/a:1", Status: pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT}},
	})
	analyzer := analyzer.NewAnalyzer(store, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	reg := metrics.NewRegistry(metrics.NewCollector(store, analyzer, metrics.Config{}), metrics.NewReports([]string{"snapshot", "update"}, []string{"invalid_node"}))
	srv := httptest.NewServer(NewHandler(reg, ready, nil))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestEndpoints(t *testing.T) {
	srv := newTestServer(t, &Readiness{})
	tests := []struct {
		path     string
		wantCode int
		wantBody []string // substrings
	}{
		{"/healthz", http.StatusOK, []string{"ok"}},
		{"/metrics", http.StatusOK, []string{
			"# TYPE pullwatch_node_image_status gauge",
			`pullwatch_node_image_status{image="docker.io/library/a:1",node="node-a",status="absent"} 1`,
			"pullwatch_agents_connected 0",
			`pullwatch_reports_rejected_total{reason="invalid_node"} 0`,
			"go_goroutines",
		}},
		{"/", http.StatusOK, []string{"/metrics", "/healthz", "/readyz"}},
		{"/status", http.StatusNotFound, nil},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			code, body := get(t, srv, tt.path)
			if code != tt.wantCode {
				t.Errorf("GET %s: %d, want %d", tt.path, code, tt.wantCode)
			}
			for _, want := range tt.wantBody {
				if !strings.Contains(body, want) {
					t.Errorf("GET %s: body lacks %q:\n%s", tt.path, want, body)
				}
			}
		})
	}
}

func TestReadyzFollowsReadiness(t *testing.T) {
	var ready Readiness
	srv := newTestServer(t, &ready)
	steps := []struct {
		name string
		set  func()
		want int
	}{
		{"before the gRPC listener serves", func() {}, http.StatusServiceUnavailable},
		{"serving", func() { ready.Set(true) }, http.StatusOK},
		{"shutting down", func() { ready.Set(false) }, http.StatusServiceUnavailable},
	}
	for _, st := range steps {
		st.set()
		if code, _ := get(t, srv, "/readyz"); code != st.want {
			t.Errorf("%s: /readyz %d, want %d", st.name, code, st.want)
		}
		// Liveness does not follow readiness.
		if code, _ := get(t, srv, "/healthz"); code != http.StatusOK {
			t.Errorf("%s: /healthz %d, want 200", st.name, code)
		}
	}
}
