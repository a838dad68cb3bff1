package web

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

// bigStore is 1,000 nodes × 50 images, each image on a down mirror and an
// answering upstream of its own registry (50 endpoints per node, 100
// columns in all): the grid's worst case.
func bigStore() *state.Store {
	s := state.New(time.Hour)
	for n := range 1000 {
		snap := &pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: fmt.Sprintf("node-%04d", n), AgentVersion: "v0.1.0"}}
		for i := range 50 {
			reg := fmt.Sprintf("registry-%02d.example", i%50)
			st := pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE
			if (n+i)%40 == 0 {
				st = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
			}
			snap.Images = append(snap.Images, &pullwatchv1.ImageReport{
				Image: fmt.Sprintf("%s/team/app-%d:v1", reg, i), Registry: reg, Status: st, InUse: i%2 == 0, Reason: "manifest unknown",
				Endpoints: []*pullwatchv1.EndpointResult{
					{Url: "https://mirror." + reg + "/v2", Role: pullwatchv1.EndpointRole_ENDPOINT_ROLE_MIRROR, Status: pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE, Reason: "dial tcp: i/o timeout"},
					{Url: "https://" + reg + "/v2", Role: pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM, Status: st, HttpStatus: 200},
				},
			})
		}
		s.ApplySnapshot(snap)
	}
	return s
}

// BenchmarkStatusPage serves GET / over 1,000 nodes × 50 images: the
// first request of a diagnosis generation builds the tables, the others
// reuse them.
func BenchmarkStatusPage(b *testing.B) {
	store := bigStore()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	page := NewStatusPage(analyzer.NewAnalyzer(store, nil, log), store, log)
	serve := func(target string) int {
		rec := httptest.NewRecorder()
		page.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
		if rec.Code != http.StatusOK {
			b.Fatalf("GET %s: %d", target, rec.Code)
		}
		return rec.Body.Len()
	}
	b.Run("first", func(b *testing.B) {
		size := 0
		for b.Loop() {
			page.mu.Lock()
			page.cache = nil
			page.mu.Unlock()
			size = serve("/")
		}
		b.ReportMetric(float64(size), "page-bytes")
	})
	for _, target := range []string{"/", "/?limit=500", "/?status=absent&page=2"} {
		b.Run("cached"+target, func(b *testing.B) {
			serve(target)
			size := 0
			for b.Loop() {
				size = serve(target)
			}
			b.ReportMetric(float64(size), "page-bytes")
		})
	}
}
