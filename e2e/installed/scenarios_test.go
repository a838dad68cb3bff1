package installed

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// The cluster-in-a-box scenarios on the installed system: the same faults
// e2e/cluster makes with hand-started binaries, here with deploy/ as a user
// installs it, the shipped rules in a real Prometheus that found the
// aggregator through the Kubernetes API, and what a user does to the
// installation (rollouts) done with kubectl.

// TestDaemonSetRolloutNoFalseAlert: the agent DaemonSet rolls to a new
// image tag, node by node; no alert fires or even turns pending, and every
// node is fresh afterwards.
func TestDaemonSetRolloutNoFalseAlert(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	waitQuiet(ctx, t)
	agent, _, err := c.PushImages(ctx, builtImage("pullwatch-agent"), builtImage("pullwatch-aggregator"), "v2")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	noAlertDuring(ctx, t, 30*time.Second, func() error {
		if _, err := c.Kubectl(ctx, "-n", kubecluster.Namespace, "set", "image", "daemonset/pullwatch-agent", "agent="+agent); err != nil {
			return err
		}
		_, err := c.Kubectl(ctx, "-n", kubecluster.Namespace, "rollout", "status", "daemonset/pullwatch-agent", "--timeout=5m")
		return err
	})
	pods, err := c.Client().CoreV1().Pods(kubecluster.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pullwatch-agent"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Spec.Containers[0].Image != agent {
			t.Errorf("agent pod %s on %s runs %s after the rollout, want %s", p.Name, p.Spec.NodeName, p.Spec.Containers[0].Image, agent)
		}
	}
	waitFresh(ctx, t, len(c.Nodes))
	t.Logf("the DaemonSet rolled to %s on %d nodes in %s with no alert, not even pending", agent, len(c.Nodes), time.Since(start).Round(time.Second))
}

// TestAggregatorRestartNoGap: the aggregator Deployment restarts (kubectl
// rollout restart, as an upgrade does); the new pod holds every node's full
// state within one agent interval of becoming Ready, and no alert fires.
// The shipped minReadySeconds keeps each old replica until its successor
// has been Ready 15 s, so the rollout outlasts the check: when each new
// pod became complete is recorded while the rollout runs.
func TestAggregatorRestartNoGap(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	waitQuiet(ctx, t)
	before := aggregatorPods(ctx, t, c)
	complete := completeSince(ctx, len(c.Nodes))
	noAlertDuring(ctx, t, 20*time.Second, func() error {
		if _, err := c.Kubectl(ctx, "-n", kubecluster.Namespace, "rollout", "restart", "deployment/pullwatch-aggregator"); err != nil {
			return err
		}
		if _, err := c.Kubectl(ctx, "-n", kubecluster.Namespace, "rollout", "status", "deployment/pullwatch-aggregator", "--timeout=5m"); err != nil {
			return err
		}
		// Every new pod complete, from its own /metrics as Prometheus
		// scrapes it.
		for _, p := range aggregatorPods(ctx, t, c) {
			if _, old := before[p.Name]; old {
				continue
			}
			ready := podReadySince(&p)
			at, err := complete(p.Name, 3*time.Minute)
			if err != nil {
				return fmt.Errorf("new aggregator pod %s: %w", p.Name, err)
			}
			took := max(at.Sub(ready), 0)
			t.Logf("new aggregator pod %s on %s: every node's state back %s after it turned Ready (the agents' --interval is 1m; Prometheus scrapes every 2s)", p.Name, p.Spec.NodeName, took.Round(time.Second))
			if took > time.Minute+10*time.Second {
				t.Errorf("the restarted aggregator %s was complete only %s after it was Ready, want within one interval", p.Name, took.Round(time.Second))
			}
		}
		return nil
	})
}

// completeSince polls Prometheus every second, until ctx ends, for the
// aggregator pods that have every one of nodes fresh, and returns a
// function that waits (up to timeout) for pod to be one and says when it
// was first seen so.
func completeSince(ctx context.Context, nodes int) func(pod string, timeout time.Duration) (time.Time, error) {
	var mu sync.Mutex
	first := map[string]time.Time{}
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if s, err := prom.Query(ctx, `sum by (pod) (pullwatch_nodes{state="fresh"})`); err == nil {
				now := time.Now()
				mu.Lock()
				for _, x := range s {
					if _, seen := first[x.Labels["pod"]]; !seen && int(x.Value) == nodes {
						first[x.Labels["pod"]] = now
					}
				}
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func(pod string, timeout time.Duration) (time.Time, error) {
		var at time.Time
		err := proc.Poll(ctx, timeout, time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			var ok bool
			if at, ok = first[pod]; !ok {
				return fmt.Errorf("sum(pullwatch_nodes{state=\"fresh\",pod=%q}) has not reached %d", pod, nodes)
			}
			return nil
		})
		return at, err
	}
}

// Every query below holds with one aggregator replica or several (each
// replica has every node's state; Prometheus scrapes each).

// TestMirrorDownInstalled: the mirror every node's hosts.toml names first
// stops. pullwatch says the mirror (not the registry, not a node) fails,
// from every node, images stay available (pulls fall back to the
// registry), and the mirror alert is the only one.
func TestMirrorDownInstalled(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	waitQuiet(ctx, t)
	if err := c.Mirror.Stop(); err != nil {
		t.Fatal(err)
	}
	defer restart(t, c.Mirror)
	sel := fmt.Sprintf(`pullwatch_registry_failure{scope="mirror",endpoint=~".*%s.*"}`, c.Mirror.Addr())
	waitQuery(ctx, t, sel, func(v float64) bool { return int(v) == len(c.Nodes) }, "the mirror failing at mirror scope from every node")
	waitEmpty(ctx, t, `(pullwatch_node_image_status{status!="available"} == 1) and on (node, image) (pullwatch_node_image_in_use == 1)`, "an image in use not available")
	waitAlerts(ctx, t, []string{"PullwatchMirrorDown"}, map[string]string{"alertname": "PullwatchMirrorDown"})
	restart(t, c.Mirror)
	waitEmpty(ctx, t, `pullwatch_registry_failure`, "registry failure after the mirror is back")
}

// TestOutageInstalled: the registry and its mirror both stop: a registry
// outage. Every node's images are unreachable, the failure is
// cluster-scoped, and the outage alert is the only one (no per-node or
// mirror alerts on top of it).
func TestOutageInstalled(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	waitQuiet(ctx, t)
	for _, r := range []*registry.Registry{c.Registry, c.Mirror} {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
		defer restart(t, r)
	}
	waitQuery(ctx, t, `count(max by (endpoint) (pullwatch_registry_failure{scope="cluster"}))`, func(v float64) bool { return v == 2 }, "the registry and the mirror failing at cluster scope")
	waitQuery(ctx, t, `count(pullwatch_image_failure{scope!="cluster"}) or vector(0)`, func(v float64) bool { return v == 0 }, "no image failure at a narrower scope")
	waitAlerts(ctx, t, []string{"PullwatchRegistryOutage"}, map[string]string{"alertname": "PullwatchRegistryOutage", "registry": c.Registry.Addr()})
	for _, r := range []*registry.Registry{c.Registry, c.Mirror} {
		restart(t, r)
	}
	waitEmpty(ctx, t, `pullwatch_registry_failure`, "registry failure after the outage")
}

// TestAgentMissingInstalled: a node's kubelet dies and its agent with it
// (nothing restarts the agent): the aggregator marks that node stale after
// --stale-after, keeps its last results (a stale node's failures page
// nobody), and the agent-missing alert names that node only. The kubelet comes back,
// restarts the agent, and the node is fresh again.
func TestAgentMissingInstalled(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	waitQuiet(ctx, t)
	n := c.Nodes[len(c.Nodes)-1]
	if err := n.StopKubelet(); err != nil {
		t.Fatal(err)
	}
	started := false
	defer func() {
		if !started {
			_ = n.StartKubelet(context.Background())
		}
	}()
	killed, err := n.KillContainers(ctx, "pullwatch-agent")
	if err != nil || killed == 0 {
		t.Fatalf("kill the agent on %s: killed %d: %v", n.Name(), killed, err)
	}
	gone := time.Now()
	waitQuery(ctx, t, fmt.Sprintf(`max(pullwatch_node_stale{node=%q})`, n.Name()), func(v float64) bool { return v == 1 }, n.Name()+" stale")
	t.Logf("%s stale %s after its agent died (the shipped --stale-after is 3m)", n.Name(), time.Since(gone).Round(time.Second))
	waitAlerts(ctx, t, []string{"PullwatchAgentMissing"}, map[string]string{"alertname": "PullwatchAgentMissing", "node": n.Name()})
	// Its last results are kept (e2e/cluster checks them), but a stale
	// node's failures page nobody: waitAlerts above found the agent-missing
	// alert alone.

	if err := n.StartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	started = true
	waitFresh(ctx, t, len(c.Nodes))
	waitQuiet(ctx, t)
}

// --- helpers

// restart starts r again if it is stopped.
func restart(t *testing.T, r *registry.Registry) {
	t.Helper()
	if r.Running() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.Restart(ctx); err != nil {
		t.Errorf("restart the registry %s: %v", r.Addr(), err)
	}
}

// alerts are the names and labels of every alert Prometheus has pending or
// firing, one line each.
func alerts(ctx context.Context) ([]prometheus.Sample, error) {
	return prom.Query(ctx, `ALERTS`)
}

func describeAlerts(s []prometheus.Sample) string {
	var lines []string
	for _, x := range s {
		lines = append(lines, fmt.Sprint(x.Labels))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// waitQuiet waits until Prometheus has no alert pending or firing: the
// state each scenario starts from.
func waitQuiet(ctx context.Context, t *testing.T) {
	t.Helper()
	var last []prometheus.Sample
	quiet := 0
	if err := proc.Poll(ctx, 4*time.Minute, 2*time.Second, func() error {
		s, err := alerts(ctx)
		if err != nil {
			return err
		}
		last = s
		if len(s) > 0 {
			quiet = 0
			return fmt.Errorf("%d alerts", len(s))
		}
		// A Prometheus that has not scraped the aggregator yet has no
		// alert either, until its first rule evaluation finds
		// pullwatch_agents_connected absent: quiet is the aggregator
		// scraped and no alert, twice in a row (the evaluation interval
		// is the poll's, 2 s).
		up, err := prom.Query(ctx, `pullwatch_agents_connected`)
		if err != nil {
			return err
		}
		if len(up) == 0 {
			quiet = 0
			return fmt.Errorf("no aggregator scraped yet")
		}
		if quiet++; quiet < 2 {
			return fmt.Errorf("quiet once")
		}
		return nil
	}); err != nil {
		t.Fatalf("the box never went quiet before the scenario: %v\n%s", err, describeAlerts(last))
	}
}

// noAlertDuring runs do while watching Prometheus' ALERTS every 2 s, and
// for settle after it; any alert, even pending, fails the test.
func noAlertDuring(ctx context.Context, t *testing.T, settle time.Duration, do func() error) {
	t.Helper()
	var mu sync.Mutex
	seen := map[string]bool{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			if s, err := alerts(ctx); err == nil {
				mu.Lock()
				for _, x := range s {
					seen[fmt.Sprint(x.Labels)] = true
				}
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	err := do()
	if err == nil {
		select {
		case <-time.After(settle):
		case <-ctx.Done():
		}
	}
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) > 0 {
		var l []string
		for k := range seen {
			l = append(l, k)
		}
		sort.Strings(l)
		t.Errorf("alerts during the operation (none expected):\n%s", strings.Join(l, "\n"))
	}
}

// waitAlerts waits for an alert (pending or firing) with the labels want,
// then requires that every alert Prometheus has is one of names.
func waitAlerts(ctx context.Context, t *testing.T, names []string, want map[string]string) {
	t.Helper()
	var last []prometheus.Sample
	found := false
	// Until the alerts settle: while the nodes' rounds disagree for a
	// moment (one has seen the failure, the other not yet), a narrower
	// alert may be pending; it must resolve, never fire.
	err := proc.Poll(ctx, 4*time.Minute, 2*time.Second, func() error {
		s, err := alerts(ctx)
		if err != nil {
			return err
		}
		last = s
		var extra []string
		for _, x := range s {
			found = found || hasLabels(x.Labels, want)
			if !slices.Contains(names, x.Labels["alertname"]) {
				if x.Labels["alertstate"] == "firing" {
					return fmt.Errorf("alert %v fired besides the expected %v: %w", x.Labels, names, proc.ErrStop)
				}
				extra = append(extra, x.Labels["alertname"])
			}
		}
		switch {
		case !found:
			return fmt.Errorf("no alert %v", want)
		case len(extra) > 0:
			return fmt.Errorf("alerts %v pending besides the expected %v", extra, names)
		}
		return nil
	})
	if err != nil {
		if !found {
			t.Fatalf("%v; alerts:\n%s", err, describeAlerts(last))
		}
		for _, x := range last {
			if !slices.Contains(names, x.Labels["alertname"]) {
				t.Errorf("alert %v besides the expected %v", x.Labels, names)
			}
		}
	}
	t.Logf("alerts: %s", describeAlerts(last))
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// waitEmpty waits until promql has no samples.
func waitEmpty(ctx context.Context, t *testing.T, promql, what string) {
	t.Helper()
	var last []prometheus.Sample
	if err := proc.Poll(ctx, 3*time.Minute, 2*time.Second, func() error {
		s, err := prom.Query(ctx, promql)
		if err != nil {
			return err
		}
		last = s
		if len(s) > 0 {
			return fmt.Errorf("%d samples", len(s))
		}
		return nil
	}); err != nil {
		var l []string
		for _, x := range last {
			l = append(l, fmt.Sprintf("%v %v", x.Labels, x.Value))
		}
		t.Fatalf("%s: %s: %v\n%s", what, promql, err, strings.Join(l, "\n"))
	}
}

// waitFresh waits until every node is fresh, on every aggregator pod
// Prometheus scrapes.
func waitFresh(ctx context.Context, t *testing.T, nodes int) {
	t.Helper()
	waitQuery(ctx, t, `min(sum by (pod) (pullwatch_nodes{state="fresh"}))`, func(v float64) bool { return int(v) == nodes }, "every node fresh")
}

func aggregatorPods(ctx context.Context, t *testing.T, c *kubecluster.Cluster) map[string]corev1.Pod {
	t.Helper()
	l, err := c.Client().CoreV1().Pods(kubecluster.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pullwatch-aggregator"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]corev1.Pod{}
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil {
			out[p.Name] = p
		}
	}
	return out
}

func podReadySince(p *corev1.Pod) time.Time {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return c.LastTransitionTime.Time
		}
	}
	return time.Now()
}
