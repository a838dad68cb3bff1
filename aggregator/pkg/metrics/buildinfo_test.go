package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pullwatch/pullwatch/pkg/buildinfo"
)

func TestBuildInfo(t *testing.T) {
	c := NewBuildInfo(buildinfo.Info{Version: "v0.3.1", Revision: "abc123", GoVersion: "go1.26.6"})
	want := `
# HELP pullwatch_build_info Always 1; the labels say which build of pullwatch-aggregator runs: version, revision (commit) and goversion.
# TYPE pullwatch_build_info gauge
pullwatch_build_info{goversion="go1.26.6",revision="abc123",version="v0.3.1"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pullwatch_build_info"); err != nil {
		t.Error(err)
	}
}
