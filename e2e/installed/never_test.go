package installed

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
)

// TestAgentNeverReportedInstalled: an agent kept from starting on one node
// (the DaemonSet's nodeSelector patched to leave it out, as a node pool's
// labels or a runtime mismatch would) is not invisible. After the
// aggregator restarts with no report from that node ever, every replica
// exports pullwatch_node_not_reporting{reason="never"} for it and
// pullwatch_api_nodes counts it not_reporting; the shipped rules'
// all-replicas record has it and PullwatchAgentMissing turns pending. The
// DaemonSet and the node are restored afterwards and every node reports
// again.
func TestAgentNeverReportedInstalled(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	start := time.Now()
	left := c.Nodes[len(c.Nodes)-1].Name()
	const label = "pullwatch-e2e/agent"
	ns := kubecluster.Namespace
	kubectl := func(args ...string) {
		t.Helper()
		if out, err := c.Kubectl(ctx, args...); err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
	}
	for _, n := range c.Nodes[:len(c.Nodes)-1] {
		kubectl("label", "node", n.Name(), label+"=yes", "--overwrite")
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		restored := time.Now()
		for _, args := range [][]string{
			{"-n", ns, "patch", "daemonset/pullwatch-agent", "--type=merge", "-p", `{"spec":{"template":{"spec":{"nodeSelector":{"` + label + `":null}}}}}`},
			{"-n", ns, "rollout", "status", "daemonset/pullwatch-agent", "--timeout=3m"},
		} {
			if out, err := c.Kubectl(ctx, args...); err != nil {
				t.Errorf("restore: kubectl %v: %v\n%s", args, err, out)
			}
		}
		for _, n := range c.Nodes {
			if out, err := c.Kubectl(ctx, "label", "node", n.Name(), label+"-"); err != nil {
				t.Errorf("restore: unlabel %s: %v\n%s", n.Name(), err, out)
			}
		}
		waitFresh(ctx, t, len(c.Nodes))
		t.Logf("restored: the agent back on %s and every node fresh in %s", left, time.Since(restored).Round(time.Second))
	})
	kubectl("-n", ns, "patch", "daemonset/pullwatch-agent", "--type=merge", "-p", `{"spec":{"template":{"spec":{"nodeSelector":{"`+label+`":"yes"}}}}}`)
	kubectl("-n", ns, "rollout", "status", "daemonset/pullwatch-agent", "--timeout=3m")
	// Both aggregator pods at once: the new ones never hear from the node.
	kubectl("-n", ns, "delete", "pod", "-l", "app.kubernetes.io/name=pullwatch-aggregator", "--wait=false")
	kubectl("-n", ns, "rollout", "status", "deployment/pullwatch-aggregator", "--timeout=3m")

	replicas := len(aggregatorPods(ctx, t, c))
	waitSamples(ctx, t, fmt.Sprintf(`pullwatch_node_not_reporting{node=%q,reason="never"}`, left), replicas, "every aggregator replica says the node never reported")
	waitSamples(ctx, t, fmt.Sprintf(`node_reason:pullwatch_node_not_reporting:all_replicas{node=%q,reason="never"}`, left), 1, "the shipped record has it")
	waitQuery(ctx, t, `max(pullwatch_api_nodes{state="not_reporting"})`, func(v float64) bool { return v == 1 }, "pullwatch_api_nodes counts it")
	waitSamples(ctx, t, fmt.Sprintf(`ALERTS{alertname="PullwatchAgentMissing",node=%q,reason="never"}`, left), 1, "PullwatchAgentMissing pending for it")
	// The cluster dashboard's panel lists it.
	q := panelQuery(t, "pullwatch-cluster.json", "Nodes not reporting", left)
	if _, err := prom.WaitForQuery(ctx, q, func(s []prometheus.Sample) bool { return len(s) == 1 && s[0].Labels["node"] == left }, 30*time.Second); err != nil {
		t.Errorf("the cluster dashboard's \"Nodes not reporting\" panel: %v", err)
	}
	if s, err := prom.Query(ctx, `sum(max by (zone) (pullwatch_api_nodes{state="reporting"}))`); err != nil || len(s) != 1 || int(s[0].Value) != len(c.Nodes)-1 {
		t.Errorf("pullwatch_api_nodes{state=\"reporting\"} = %v (%v), want %d", s, err, len(c.Nodes)-1)
	}
	t.Logf("an agent kept off %s: reported as never reporting by %d replicas %s after the DaemonSet patch", left, replicas, time.Since(start).Round(time.Second))
}

// waitSamples polls Prometheus until promql returns n samples.
func waitSamples(ctx context.Context, t *testing.T, promql string, n int, what string) {
	t.Helper()
	var last []prometheus.Sample
	if _, err := prom.WaitForQuery(ctx, promql, func(s []prometheus.Sample) bool { last = s; return len(s) == n }, 2*time.Minute); err != nil {
		t.Fatalf("%s: %v (last %v)", what, err, last)
	}
}
