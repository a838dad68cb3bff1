package health

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestAggregatorConnectedPerAddress(t *testing.T) {
	m := New(time.Minute, func() bool { return true })
	m.ReportEndpoints(func() map[string]bool { return map[string]bool{"10.0.0.1:9400": true, "10.0.0.2:9400": false} })
	want := `
# HELP pullwatch_agent_aggregator_connected ` + strings.ReplaceAll(aggregatorConnectedHelp(), "\n", " ") + `
# TYPE pullwatch_agent_aggregator_connected gauge
pullwatch_agent_aggregator_connected{aggregator="10.0.0.1:9400"} 1
pullwatch_agent_aggregator_connected{aggregator="10.0.0.2:9400"} 0
`
	if err := testutil.GatherAndCompare(m.registry, strings.NewReader(want), "pullwatch_agent_aggregator_connected"); err != nil {
		t.Error(err)
	}
}
