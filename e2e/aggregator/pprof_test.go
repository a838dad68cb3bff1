package aggregator_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

// TestProfilesOnlyWhenAsked: the real binary serves Go's runtime profiles
// under /debug/pprof/ with --pprof, and not without.
func TestProfilesOnlyWhenAsked(t *testing.T) {
	l := lab.Need(t)
	_, plain, _ := l.StartAggregator(t)
	if code, body := lab.HTTPGet("http://" + plain + "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("without --pprof: /debug/pprof/ answered %d, want 404: %.200s", code, body)
	}
	_, profiled, _ := l.StartAggregator(t, "--pprof")
	if code, body := lab.HTTPGet("http://" + profiled + "/debug/pprof/heap?debug=1"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Errorf("with --pprof: /debug/pprof/heap answered %d: %.200s", code, body)
	}
	if code, _ := lab.HTTPGet("http://" + profiled + "/metrics"); code != http.StatusOK {
		t.Errorf("with --pprof: /metrics answered %d", code)
	}
}
