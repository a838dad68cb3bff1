package web

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

func serveGet(t *testing.T, page http.Handler, target string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	page.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec.Code, rec.Body.String()
}

func TestStatusPageFiltersAndPages(t *testing.T) {
	store := state.New(time.Minute)
	ep := &pullwatchv1.EndpointResult{Url: "https://r.example/v2", Role: pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM,
		Status: pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE, HttpStatus: 200}
	for i := range 250 {
		st := pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE
		if i%50 == 0 {
			st = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
		}
		store.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: fmt.Sprintf("node-%03d", i)},
			Images: []*pullwatchv1.ImageReport{{Image: "r.example/app:1", Registry: "r.example", Status: st, Endpoints: []*pullwatchv1.EndpointResult{ep}}}})
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	page := NewStatusPage(analyzer.NewAnalyzer(store, nil, log), store, log)
	nodes := regexp.MustCompile(`<td class="node mono">(node-\d+)`)

	_, body := serveGet(t, page, "/")
	if n := len(nodes.FindAllString(body, -1)); n != defaultLimit {
		t.Fatalf("first page has %d nodes, want %d", n, defaultLimit)
	}
	if !strings.Contains(body, "Nodes 1–100 of 250.") || !strings.Contains(body, `<a href="/?page=2">next</a>`) {
		t.Error("first page lacks its position or the next link")
	}
	_, body = serveGet(t, page, "/?page=3")
	if n := len(nodes.FindAllString(body, -1)); n != 50 || !strings.Contains(body, "previous") || strings.Contains(body, ">next<") {
		t.Errorf("last page: %d nodes", n)
	}
	_, body = serveGet(t, page, "/?status=absent")
	if got := nodes.FindAllStringSubmatch(body, -1); len(got) != 5 || got[0][1] != "node-000" {
		t.Errorf("status=absent shows %d nodes, want the 5 with an absent image", len(got))
	}
	_, body = serveGet(t, page, "/?node=node-24&limit=3")
	if got := nodes.FindAllStringSubmatch(body, -1); len(got) != 3 || !strings.Contains(body, "Nodes 1–3 of 10.") || !strings.Contains(body, "Showing only node=node-24") {
		t.Errorf("node=node-24&limit=3: %d nodes", len(got))
	}
	_, body = serveGet(t, page, "/?registry=other.example")
	if strings.Contains(body, "r.example/app:1") || !strings.Contains(body, "No failing image matches.") {
		t.Error("registry filter shows another registry's image")
	}
	for _, bad := range []string{"/?limit=0", "/?limit=501", "/?page=x", "/?status=fine"} {
		if code, _ := serveGet(t, page, bad); code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", bad, code)
		}
	}
}

func TestStatusPageBuiltOncePerGeneration(t *testing.T) {
	store := statusStore()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	page := NewStatusPage(analyzer.NewAnalyzer(store, nil, log), store, log)
	serveGet(t, page, "/")
	first := page.cache
	serveGet(t, page, "/?node=node-a")
	if page.cache != first {
		t.Fatal("a second request with the same diagnosis rebuilt the page")
	}
	store.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "node-a", RemovedImages: []string{"registry.example/gone:1"}})
	store.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "node-e", RemovedImages: []string{"registry.example/gone:1"}})
	if _, body := serveGet(t, page, "/"); page.cache == first || strings.Contains(body, "registry.example/gone:1") {
		t.Fatal("the page did not follow a changed diagnosis")
	}
}
