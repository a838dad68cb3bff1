package web

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

func TestStatusPageNotices(t *testing.T) {
	store := state.New(time.Minute)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	page := NewStatusPage(analyzer.NewAnalyzer(store, nil, log), store, log).
		WithNotices("agent authentication is off (--auth=none)", "<b>escaped</b>")
	rec := httptest.NewRecorder()
	page.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	body := rec.Body.String()
	for _, want := range []string{"agent authentication is off (--auth=none)", "&lt;b&gt;escaped&lt;/b&gt;"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	plain := httptest.NewRecorder()
	NewStatusPage(analyzer.NewAnalyzer(store, nil, log), store, log).ServeHTTP(plain, httptest.NewRequest("GET", "/", nil))
	if strings.Contains(plain.Body.String(), `class="notice`) {
		t.Error("a page without notices shows one")
	}
}
