package stream_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// TestAgentStreamsToAggregator: the agent daemon streams to the aggregator,
// whose /metrics shows each image's status, and a real Prometheus scrapes it.
func TestAgentStreamsToAggregator(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	ok := l.Reg.Ref("stream/ok", "v1")
	gone := l.Reg.Ref("stream/gone", "v1")
	if _, err := registry.PushImage(ctx, l.Reg, "stream/ok", "v1", registry.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	goneDigest, err := registry.PushImage(ctx, l.Reg, "stream/gone", "v1", registry.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{ok, gone} {
		if _, err := l.Containerd.PullImage(ctx, ref, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := registry.DeleteManifest(ctx, l.Reg, "stream/gone", goneDigest); err != nil {
		t.Fatal(err)
	}

	grpcAddr, httpAddr, agg := l.StartAggregator(t)
	agentPort, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	agentHTTP := fmt.Sprintf("127.0.0.1:%d", agentPort)
	agent := l.StartAgent(t, grpcAddr, []string{"NODE_NAME=stream-node"}, "--interval", "2s", "--http-listen", agentHTTP)

	want := []string{
		fmt.Sprintf(`pullwatch_node_image_status{image=%q,node="stream-node",status="available"} 1`, ok),
		fmt.Sprintf(`pullwatch_node_image_status{image=%q,node="stream-node",status="absent"} 1`, gone),
		`pullwatch_agent_last_report_timestamp_seconds{node="stream-node"}`,
	}
	metricsURL := "http://" + httpAddr + "/metrics"
	lab.WaitFor(t, 30*time.Second, "the node's statuses on /metrics", func() (bool, string) {
		_, body := lab.HTTPGet(metricsURL)
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false, "missing " + w + "\n" + lab.GrepLines(body, "pullwatch_")
			}
		}
		return true, ""
	}, agent, agg)

	// The agent's own endpoint: ready once a round is published and the
	// stream is up, and its metrics count the rounds.
	lab.WaitFor(t, 10*time.Second, "the agent's /readyz", func() (bool, string) {
		code, body := lab.HTTPGet("http://" + agentHTTP + "/readyz")
		return code == http.StatusOK, body
	}, agent)
	if code, body := lab.HTTPGet("http://" + agentHTTP + "/healthz"); code != http.StatusOK {
		t.Errorf("agent /healthz: %d %s", code, body)
	}
	if _, body := lab.HTTPGet("http://" + agentHTTP + "/metrics"); !strings.Contains(body, `pullwatch_agent_rounds_total{result="ok"}`) || !strings.Contains(body, "pullwatch_agent_stream_connected 1") {
		t.Errorf("agent /metrics lacks its round and stream metrics:\n%s", lab.GrepLines(body, "pullwatch_agent"))
	}

	// One series per node and image: no zero series for other statuses.
	_, body := lab.HTTPGet(metricsURL)
	if n := strings.Count(body, fmt.Sprintf(`pullwatch_node_image_status{image=%q,node="stream-node"`, gone)); n != 1 {
		t.Errorf("%d status series for %s, want 1:\n%s", n, gone, lab.GrepLines(body, "pullwatch_node_image_status"))
	}

	// A real Prometheus scrapes the aggregator once and answers the query.
	prom, err := prometheus.Start(ctx, t.TempDir(), []string{httpAddr}, prometheus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prom.Stop() })
	samples, err := prom.WaitForQuery(ctx, `pullwatch_node_image_status{node="stream-node"}`, func(s []prometheus.Sample) bool {
		found := map[string]bool{}
		for _, x := range s {
			found[x.Labels["image"]+" "+x.Labels["status"]] = x.Value == 1
		}
		return found[ok+" available"] && found[gone+" absent"]
	}, 30*time.Second)
	if err != nil {
		t.Fatalf("prometheus query: %v (last answer %+v)", err, samples)
	}

	// SIGTERM stops the agent cleanly.
	if err := agent.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !agent.Wait(10 * time.Second) {
		t.Fatalf("agent did not stop within 10s of SIGTERM:\n%s", agent.LogTail(20))
	}
	if err := agent.ExitErr(); err != nil {
		t.Errorf("agent exit after SIGTERM: %v\n%s", err, agent.LogTail(20))
	}
}
