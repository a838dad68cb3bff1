package stream_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// TestAgentEventsTriggerRounds: with an interval far longer than the test,
// an image pulled on the node reaches the aggregator within seconds,
// because the agent follows containerd's events (containerd v2 client).
func TestAgentEventsTriggerRounds(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	grpcAddr, httpAddr, agg := l.StartAggregator(t)
	agent := l.StartAgent(t, grpcAddr, nil, "--interval", "1h", "--node-name", "events-node")
	metricsURL := "http://" + httpAddr + "/metrics"
	lab.WaitFor(t, 30*time.Second, "the first round on /metrics", func() (bool, string) {
		_, body := lab.HTTPGet(metricsURL)
		return strings.Contains(body, `pullwatch_agent_last_report_timestamp_seconds{node="events-node"}`), lab.GrepLines(body, "pullwatch_agent")
	}, agent, agg)

	if _, err := registry.PushImage(ctx, l.Reg, "events/new", "v1", registry.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	pulled := time.Now()
	if _, err := l.Containerd.PullImage(ctx, l.Reg.Ref("events/new", "v1"), nil); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`pullwatch_node_image_status{image=%q,node="events-node",status="available"} 1`, l.Reg.Ref("events/new", "v1"))
	lab.WaitFor(t, 20*time.Second, "the pulled image on /metrics without waiting for the 1h interval", func() (bool, string) {
		_, body := lab.HTTPGet(metricsURL)
		return strings.Contains(body, want), lab.GrepLines(body, "pullwatch_node_image_status")
	}, agent, agg)
	t.Logf("image pulled at %s reached the aggregator %s later", pulled.Format(time.TimeOnly), time.Since(pulled).Round(100*time.Millisecond))
	if !strings.Contains(proc.LogTail(agent.LogFile(), 50), "containerd event") {
		t.Errorf("the agent's log does not name the event that triggered the round:\n%s", agent.LogTail(30))
	}
}
