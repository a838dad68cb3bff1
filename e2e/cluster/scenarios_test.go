package cluster

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/alertmanager"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
)

// The alert names of deploy/rules (issue 5).
const (
	alertRegistryFromNode = "PullwatchRegistryUnreachableFromNode"
	alertMirrorDown       = "PullwatchMirrorDown"
	alertRegistryOutage   = "PullwatchRegistryOutage"
	alertImageAbsent      = "PullwatchImageAbsent"
	alertAgentMissing     = "PullwatchAgentMissing"
)

// How long the scenarios wait.
const (
	waitReport   = 30 * time.Second // a fault shows in the aggregator and Prometheus
	waitAlert    = 45 * time.Second // ... and its alert reaches the webhook
	waitSettle   = 60 * time.Second // healed: healthy, nothing pending or firing
	scenarioHold = 8 * time.Second  // > testFor + scrape + evaluation: what must not fire has had its chance
)

// scenario is one scenario's running commentary and its assertions.
type scenario struct {
	t   *testing.T
	c   *Cluster
	ctx context.Context
	// began is when the scenario began; since is where its alert
	// assertions start looking (moved on between the steps of one).
	began, since time.Time
	// lastProm is the last Prometheus answer, printed on failure.
	lastProm string
}

func begin(t *testing.T, what string) *scenario {
	t.Helper()
	c := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	now := time.Now()
	s := &scenario{t: t, c: c, ctx: ctx, began: now, since: now}
	t.Logf("=== %s", what)
	t.Cleanup(func() {
		t.Logf("--- %s: %s in %s", t.Name(), map[bool]string{true: "FAILED", false: "passed"}[t.Failed()], time.Since(s.began).Round(100*time.Millisecond))
	})
	return s
}

func (s *scenario) did(format string, a ...any) {
	s.t.Helper()
	s.t.Logf("[%5.1fs] did: %s", time.Since(s.began).Seconds(), fmt.Sprintf(format, a...))
}

func (s *scenario) saw(format string, a ...any) {
	s.t.Helper()
	s.t.Logf("[%5.1fs] saw: %s", time.Since(s.began).Seconds(), fmt.Sprintf(format, a...))
}

// fatal fails the scenario with the Prometheus answer, the alerts, the
// aggregator's pullwatch_ metrics and the agents' and aggregator's logs.
func (s *scenario) fatal(format string, a ...any) {
	s.t.Helper()
	s.t.Fatalf("%s\n%s", fmt.Sprintf(format, a...), s.diagnostics())
}

func (s *scenario) errorf(format string, a ...any) {
	s.t.Helper()
	s.t.Errorf("%s", fmt.Sprintf(format, a...))
}

func (s *scenario) diagnostics() string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var b strings.Builder
	if s.lastProm != "" {
		fmt.Fprintf(&b, "--- last Prometheus answer:\n%s\n", s.lastProm)
	}
	if alerts, err := s.c.PromAlerts(ctx); err == nil {
		fmt.Fprintf(&b, "--- Prometheus alerts now:\n%s\n", describeProm(alerts))
	}
	fmt.Fprintf(&b, "--- webhook since the scenario began:\n%s\n", alertmanager.Describe(theHook.Alerts(s.since)))
	if m, err := s.c.Aggregator.Metrics(ctx); err == nil {
		fmt.Fprintf(&b, "--- aggregator metrics:\n%s\n", m.Lines("pullwatch_"))
	} else {
		fmt.Fprintf(&b, "--- aggregator metrics: %v\n", err)
	}
	b.WriteString(s.c.LogTails(25))
	return b.String()
}

// aggregator waits until the aggregator's metrics satisfy cond.
func (s *scenario) aggregator(what string, cond func(Metrics) error) Metrics {
	s.t.Helper()
	t0 := time.Now()
	m, err := s.c.WaitMetrics(s.ctx, waitReport, cond)
	if err != nil {
		s.fatal("aggregator never showed %s: %v", what, err)
	}
	s.saw("aggregator: %s (after %s)", what, time.Since(t0).Round(100*time.Millisecond))
	return m
}

// prom waits until Prometheus's answer to expr satisfies pred and returns it.
func (s *scenario) prom(expr string, what string, pred func([]prometheus.Sample) bool) []prometheus.Sample {
	s.t.Helper()
	t0 := time.Now()
	got, err := s.c.Prometheus.WaitForQuery(s.ctx, expr, func(r []prometheus.Sample) bool {
		s.lastProm = expr + " =>\n" + describeSamples(r)
		return pred(r)
	}, waitReport)
	if err != nil {
		s.fatal("Prometheus never showed %s: %v", what, err)
	}
	s.saw("Prometheus: %s (after %s):\n%s", what, time.Since(t0).Round(100*time.Millisecond), indent(describeSamples(got)))
	return got
}

// promEmpty asserts that expr has no result now.
func (s *scenario) promEmpty(expr, what string) {
	s.t.Helper()
	got, err := s.c.Prometheus.Query(s.ctx, expr)
	if err != nil {
		s.fatal("query %s: %v", expr, err)
	}
	if len(got) > 0 {
		s.lastProm = expr + " =>\n" + describeSamples(got)
		s.errorf("Prometheus: want no %s, got:\n%s", what, describeSamples(got))
		return
	}
	s.saw("Prometheus: no %s (%s)", what, expr)
}

// alert waits for a firing notification of alert name with labels want
// at the webhook (sent since the scenario began) and returns it. An alert
// the shipped rules do not define is reported as such.
func (s *scenario) alert(name string, want map[string]string) alertmanager.Alert {
	s.t.Helper()
	if _, ok := s.c.ShippedFor[name]; !ok {
		s.fatal("alert %s is not defined in the shipped rules (%v): issue 5's rules are not there yet", name, keys(s.c.ShippedFor))
	}
	t0 := time.Now()
	match := func(a alertmanager.Alert) bool {
		return a.Name() == name && a.Status == "firing" && alertmanager.Match(a, want)
	}
	got, err := theHook.WaitFor(s.ctx, s.since, waitAlert, func(as []alertmanager.Alert) bool {
		for _, a := range as {
			if match(a) {
				return true
			}
		}
		return false
	})
	if err != nil {
		s.fatal("alert %s %v never reached the webhook: %v", name, want, err)
	}
	for _, a := range got {
		if match(a) {
			s.saw("webhook: %s (after %s): %s", a, time.Since(t0).Round(100*time.Millisecond), a.Annotations["summary"])
			return a
		}
	}
	panic("unreachable")
}

// hold waits scenarioHold, then asserts that no alert that allow rejects
// was notified firing since the scenario began, and that Prometheus has
// none firing either. allow nil rejects every alert.
func (s *scenario) hold(why string, allow func(alertmanager.Alert) bool) {
	s.t.Helper()
	s.did("wait %s: %s", scenarioHold, why)
	select {
	case <-time.After(scenarioHold):
	case <-s.ctx.Done():
		s.fatal("context done: %v", s.ctx.Err())
	}
	var bad []alertmanager.Alert
	for _, a := range theHook.Alerts(s.since) {
		if a.Status == "firing" && (allow == nil || !allow(a)) {
			bad = append(bad, a)
		}
	}
	alerts, err := s.c.PromAlerts(s.ctx)
	if err != nil {
		s.fatal("Prometheus alerts: %v", err)
	}
	var badProm []PromAlert
	for _, a := range alerts {
		if a.State == "firing" && (allow == nil || !allow(alertmanager.Alert{Labels: a.Labels})) {
			badProm = append(badProm, a)
		}
	}
	if len(bad) > 0 || len(badProm) > 0 {
		s.errorf("unexpected alerts: webhook:\n%s\nPrometheus firing:\n%s", alertmanager.Describe(bad), describeProm(badProm))
		return
	}
	s.saw("no unexpected alert (Prometheus now: %s)", strings.ReplaceAll(describeProm(alerts), "\n", "; "))
}

// settle heals every fault and waits until every node reports every image
// available and Prometheus has no alert firing or pending.
func (s *scenario) settle() {
	s.t.Helper()
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitSettle)
	defer cancel()
	if err := s.c.Heal(ctx); err != nil {
		s.t.Errorf("heal: %v", err)
	}
	if _, err := s.c.WaitMetrics(ctx, waitSettle, s.c.Healthy); err != nil {
		s.t.Errorf("restore: the cluster did not become healthy again: %v\n%s", err, s.diagnostics())
		return
	}
	var last []PromAlert
	_, err := s.c.Prometheus.WaitForQuery(ctx, `ALERTS`, func(r []prometheus.Sample) bool {
		last, _ = s.c.PromAlerts(ctx)
		return len(r) == 0
	}, waitSettle)
	if err != nil {
		s.t.Errorf("restore: alerts did not clear: %v\n%s", err, describeProm(last))
		return
	}
	s.did("restored: every fault healed, every image available on every node, no alert pending or firing (%s)", time.Since(t0).Round(100*time.Millisecond))
}

// checkNode runs `pullwatch-agent check -o json` in the node's namespace.
func (s *scenario) checkNode(node string) agentcheck.Report {
	s.t.Helper()
	res, raw, err := s.c.Node(node).Check(s.ctx)
	if err != nil {
		s.fatal("%v\n%s", err, raw)
	}
	return res
}

// --- Scenario 1

func TestScenario1Healthy(t *testing.T) {
	s := begin(t, "scenario 1: healthy — every image available on every node, no alert")
	c := s.c
	m := s.aggregator("every node fresh, every image available", c.Healthy)
	want := 0
	for _, im := range c.Images {
		want += len(im.Nodes)
	}
	s.saw("%d node×image series, all available; nodes %d fresh", len(m.Select("pullwatch_node_image_status", map[string]string{"status": "available"})), len(c.Nodes))
	s.prom(`count(pullwatch_node_image_status{status="available"} == 1)`, fmt.Sprintf("%d node×image pairs available", want), func(r []prometheus.Sample) bool {
		return len(r) == 1 && r[0].Value == float64(want)
	})
	s.promEmpty(`pullwatch_node_image_status{status!="available"} == 1`, "image failing on any node")
	s.promEmpty(`pullwatch_registry_failure`, "registry failure")
	s.promEmpty(`pullwatch_image_failure`, "image failure")
	s.prom(`min(pullwatch_node_endpoint_up)`, "every endpoint up from every node", func(r []prometheus.Sample) bool {
		return len(r) == 1 && r[0].Value == 1
	})
	// Since the cluster came up, nothing at all has fired.
	s.since = suiteStart
	s.hold("nothing may fire in a healthy cluster (since it came up)", nil)
}

// --- Scenario 2

func TestScenario2NodeEgress(t *testing.T) {
	s := begin(t, "scenario 2: node-2 loses its egress, first to the upstream only, then to the mirror too")
	c := s.c
	defer s.settle()
	n2 := c.Node("node-2")
	up, mirror := c.Upstream, c.Mirror

	// a) upstream only: the mirror still serves node-2.
	if _, err := n2.Cut(s.ctx, up); err != nil {
		s.fatal("%v", err)
	}
	s.did("iptables REJECT in %s: node-2 → upstream %s", n2.NS.Netns(), up.Addr())
	if err := n2.Reachable(s.ctx, up); err == nil {
		s.fatal("node-2 still reaches the upstream")
	}
	if err := n2.Reachable(s.ctx, mirror); err != nil {
		s.fatal("node-2 lost the mirror too: %v", err)
	}
	s.aggregator("node-2: upstream down, mirror up, every image still available", func(m Metrics) error {
		if err := endpointUp(m, "node-2", up, 0); err != nil {
			return err
		}
		if err := endpointUp(m, "node-2", mirror, 1); err != nil {
			return err
		}
		for _, n := range []string{"node-1", "node-3"} {
			if err := endpointUp(m, n, up, 1); err != nil {
				return err
			}
		}
		return c.Healthy(m)
	})
	res := s.checkNode("node-2")
	for _, im := range res.Images {
		var upSt, mirrorSt string
		for _, e := range im.Endpoints {
			switch e.Role.Word() {
			case "upstream":
				upSt = e.Status.Word()
			case "mirror":
				mirrorSt = e.Status.Word()
			}
		}
		// The mirror answers, but the upstream fallback is gone: one
		// failure more and node-2 cannot pull, so the image is degraded.
		if im.Status.Word() != "available" || mirrorSt != "available" || upSt != "unreachable" || !im.Degraded {
			s.errorf("node-2 check: %s status %s degraded %v (mirror %s, upstream %s); want available, degraded, mirror available, upstream unreachable",
				im.Image, im.Status.Word(), im.Degraded, mirrorSt, upSt)
		}
	}
	s.saw("node-2 check -o json: %d images available through the mirror, degraded=true (the upstream fallback is gone), upstream unreachable", len(res.Images))
	s.prom(`pullwatch_registry_failure{endpoint="`+up.Endpoint()+`"}`, "the upstream endpoint failing at node scope, from 1 node", func(r []prometheus.Sample) bool {
		return len(r) == 1 && r[0].Labels["scope"] == "node" && r[0].Value == 1
	})
	s.promEmpty(`pullwatch_image_failure`, "image failure (every image is still available)")
	s.hold("no outage alert: images are still available on node-2", nil)

	// b) the mirror too: node-2 is cut off, the others are fine.
	s.since = time.Now()
	if _, err := n2.Cut(s.ctx, mirror); err != nil {
		s.fatal("%v", err)
	}
	s.did("iptables REJECT in %s: node-2 → mirror %s too", n2.NS.Netns(), mirror.Addr())
	s.aggregator("node-2: every image unreachable; node-1 and node-3 healthy", func(m Metrics) error {
		if err := c.NodeImages(m, "node-2", "unreachable"); err != nil {
			return err
		}
		for _, n := range []string{"node-1", "node-3"} {
			if err := c.NodeImages(m, n, "available"); err != nil {
				return err
			}
		}
		return nil
	})
	s.prom(`pullwatch_registry_failure`, "both endpoints failing at node scope, from 1 node", func(r []prometheus.Sample) bool {
		return len(r) == 2 && allLabel(r, "scope", "node") && allValue(r, 1)
	})
	node2Images := len(c.Images) - 1 // not the worker
	s.prom(`pullwatch_image_failure`, fmt.Sprintf("node-2's %d images failing at node scope", node2Images), func(r []prometheus.Sample) bool {
		return len(r) == node2Images && allLabel(r, "scope", "node") && allValue(r, 1)
	})
	// One alert for the node (per node, not per node × image or
	// registry); its images are not alerted on one by one
	// (PullwatchImageUnavailableOnNode stays quiet for a node that lost
	// the registry).
	s.alert(alertRegistryFromNode, map[string]string{"node": "node-2"})
	s.hold("one alert, for node-2; no outage", func(a alertmanager.Alert) bool {
		return a.Labels["node"] == "node-2" && a.Name() == alertRegistryFromNode
	})
}

// --- Scenario 3

func TestScenario3MirrorDown(t *testing.T) {
	s := begin(t, "scenario 3: the mirror is down for every node; images come from the upstream")
	c := s.c
	defer s.settle()
	if err := c.Mirror.Stop(); err != nil {
		s.fatal("stop the mirror: %v", err)
	}
	s.did("stopped the mirror registry (%s)", c.Mirror.Addr())
	s.aggregator("the mirror down and the upstream up from every node, every image available", func(m Metrics) error {
		for _, n := range c.Nodes {
			if err := endpointUp(m, n.Name, c.Mirror, 0); err != nil {
				return err
			}
			if err := endpointUp(m, n.Name, c.Upstream, 1); err != nil {
				return err
			}
		}
		return c.Healthy(m)
	})
	res := s.checkNode("node-1")
	sources := map[string]bool{}
	for _, im := range res.Images {
		if im.Status.Word() != "available" || !im.Degraded {
			s.errorf("node-1 check: %s status %s degraded %v, want available and degraded", im.Image, im.Status.Word(), im.Degraded)
		}
		if c.Auth && im.CredentialSource == "" {
			s.errorf("node-1 check: %s available from the upstream (htpasswd) with no credential_source", im.Image)
		}
		sources[im.CredentialSource] = true
	}
	auth := "the upstream asks for no credentials: " + c.AuthNote
	if c.Auth {
		auth = fmt.Sprintf("the upstream asks for credentials; credential_source %q", keys(boolKeys(sources)))
	}
	s.saw("node-1 check -o json: %d images available, degraded=true (the mirror failed first); %s", len(res.Images), auth)
	s.prom(`pullwatch_registry_failure`, "the mirror failing at mirror scope from all 3 nodes", func(r []prometheus.Sample) bool {
		return len(r) == 1 && r[0].Labels["endpoint"] == c.Mirror.Endpoint() && r[0].Labels["scope"] == "mirror" && r[0].Value == 3
	})
	s.promEmpty(`pullwatch_image_failure`, "image failure (images come from the upstream)")
	s.alert(alertMirrorDown, map[string]string{"endpoint": c.Mirror.Endpoint(), "registry": c.Upstream.Addr()})
	s.hold("only the mirror alert", func(a alertmanager.Alert) bool { return a.Name() == alertMirrorDown })
}

// --- Scenario 4

func TestScenario4Outage(t *testing.T) {
	s := begin(t, "scenario 4: the upstream and the mirror are down: a registry outage")
	c := s.c
	defer s.settle()
	for _, r := range []*Registry{c.Upstream, c.Mirror} {
		if err := r.Stop(); err != nil {
			s.fatal("stop the %s: %v", r.Name, err)
		}
	}
	s.did("stopped the upstream (%s) and the mirror (%s)", c.Upstream.Addr(), c.Mirror.Addr())
	s.aggregator("every image unreachable on every node", func(m Metrics) error {
		for _, n := range c.Nodes {
			if err := c.NodeImages(m, n.Name, "unreachable"); err != nil {
				return err
			}
		}
		return nil
	})
	s.prom(`pullwatch_registry_failure`, "both endpoints failing at cluster scope from all 3 nodes", func(r []prometheus.Sample) bool {
		return len(r) == 2 && allLabel(r, "scope", "cluster") && allValue(r, 3)
	})
	s.prom(`pullwatch_image_failure`, "every image failing at cluster scope", func(r []prometheus.Sample) bool {
		return len(r) == len(c.Images) && allLabel(r, "scope", "cluster")
	})
	s.alert(alertRegistryOutage, map[string]string{"registry": c.Upstream.Addr()})
	s.hold("one outage alert, no per-node or mirror alerts", func(a alertmanager.Alert) bool { return a.Name() == alertRegistryOutage })
}

// --- Scenario 5

func TestScenario5ImageAbsent(t *testing.T) {
	s := begin(t, "scenario 5: a manifest deleted in the registries: the image is absent")
	c := s.c
	defer s.settle()
	worker := c.Image(WorkerRepo)
	if err := c.DeleteImage(s.ctx, WorkerRepo); err != nil {
		s.fatal("%v", err)
	}
	s.did("deleted %s (%s) from the upstream and the mirror; it runs on %v", worker.Ref, worker.Digest, worker.Nodes)
	s.aggregator(fmt.Sprintf("%s absent on %v, everything else available", worker.Ref, worker.Nodes), func(m Metrics) error {
		for _, n := range c.Nodes {
			for _, im := range c.Images {
				if !contains(im.Nodes, n.Name) {
					continue
				}
				want := "available"
				if im.Repo == WorkerRepo {
					want = "absent"
				}
				labels := map[string]string{"node": n.Name, "image": im.Ref, "status": want}
				if v, ok := m.Value("pullwatch_node_image_status", labels); !ok || v != 1 {
					return fmt.Errorf("%s: %s is not %s", n.Name, im.Ref, want)
				}
			}
		}
		return nil
	})
	s.prom(`pullwatch_image_failure`, "the worker image failing at image scope on its 2 nodes", func(r []prometheus.Sample) bool {
		return len(r) == 1 && r[0].Labels["image"] == worker.Ref && r[0].Labels["scope"] == "image" && r[0].Value == float64(len(worker.Nodes))
	})
	s.prom(`pullwatch_image_nodes{status="absent"}`, "2 nodes with the image absent", func(r []prometheus.Sample) bool {
		return len(r) == 1 && r[0].Labels["image"] == worker.Ref && r[0].Value == float64(len(worker.Nodes))
	})
	s.promEmpty(`pullwatch_registry_failure`, "registry failure (the registries answer)")
	s.alert(alertImageAbsent, map[string]string{"image": worker.Ref})
	s.hold("only the image-absent alert", func(a alertmanager.Alert) bool { return a.Name() == alertImageAbsent })
}

// --- Scenario 6

func TestScenario6AgentMissing(t *testing.T) {
	s := begin(t, "scenario 6: the agent on node-3 is killed")
	c := s.c
	defer s.settle()
	n3 := c.Node("node-3")
	pid := n3.AgentPid()
	if err := n3.KillAgent(); err != nil {
		s.fatal("%v", err)
	}
	s.did("SIGKILL to node-3's agent (pid %d); the aggregator's --stale-after is %s", pid, c.StaleAfter())
	s.aggregator("node-3 stale, its last results kept", func(m Metrics) error {
		if v, ok := m.Value("pullwatch_node_stale", map[string]string{"node": "node-3"}); !ok || v != 1 {
			return fmt.Errorf("node-3 not stale")
		}
		return c.NodeImages(m, "node-3", "available")
	})
	s.prom(`pullwatch_nodes`, "2 fresh nodes, 1 stale", func(r []prometheus.Sample) bool {
		st := map[string]float64{}
		for _, x := range r {
			st[x.Labels["state"]] = x.Value
		}
		return st["fresh"] == 2 && st["stale"] == 1
	})
	s.alert(alertAgentMissing, map[string]string{"node": "node-3"})
	s.promEmpty(`pullwatch_image_failure`, "image failure (node-3's images are not failing)")
	s.promEmpty(`pullwatch_node_image_status{node="node-3",status!="available"} == 1`, "failing image on node-3")
	s.hold("only node-3's agent-missing alert", func(a alertmanager.Alert) bool {
		return a.Name() == alertAgentMissing && a.Labels["node"] == "node-3"
	})
}

// --- Scenario 7

func TestScenario7AggregatorRestart(t *testing.T) {
	s := begin(t, "scenario 7: the aggregator restarts")
	c := s.c
	defer s.settle()
	t0 := time.Now()
	if err := c.Aggregator.Stop(); err != nil {
		s.fatal("stop the aggregator: %v", err)
	}
	stopped := time.Since(t0)
	if err := c.Aggregator.Start(s.ctx); err != nil {
		s.fatal("start the aggregator: %v", err)
	}
	ready := time.Now()
	s.did("restarted the aggregator (SIGTERM took %s; down for %s in all; ready again, empty)", stopped.Round(time.Millisecond), ready.Sub(t0).Round(time.Millisecond))
	var complete time.Duration
	m := s.aggregator("every node's full state back", func(m Metrics) error {
		if err := c.Healthy(m); err != nil {
			return err
		}
		complete = time.Since(ready)
		return nil
	})
	connected, _ := m.Value("pullwatch_agents_connected", nil)
	s.saw("state complete %s after the aggregator was ready (agent interval %s); %g agents connected", complete.Round(10*time.Millisecond), c.Interval(), connected)
	if complete > c.Interval() {
		s.errorf("state complete only %s after the restart, want within one interval (%s)", complete.Round(10*time.Millisecond), c.Interval())
	}
	s.hold("no alert from the restart", nil)
}

// --- helpers

func endpointUp(m Metrics, node string, r *Registry, want float64) error {
	v, ok := m.Value("pullwatch_node_endpoint_up", map[string]string{"node": node, "endpoint": r.Endpoint()})
	if !ok || v != want {
		return fmt.Errorf("%s: pullwatch_node_endpoint_up for the %s (%s) is %v (found %v), want %v", node, r.Name, r.Endpoint(), v, ok, want)
	}
	return nil
}

func allLabel(r []prometheus.Sample, label, value string) bool {
	for _, x := range r {
		if x.Labels[label] != value {
			return false
		}
	}
	return true
}

func allValue(r []prometheus.Sample, v float64) bool {
	for _, x := range r {
		if math.Abs(x.Value-v) > 1e-9 {
			return false
		}
	}
	return true
}

func describeSamples(r []prometheus.Sample) string {
	if len(r) == 0 {
		return "(empty)"
	}
	lines := make([]string, len(r))
	for i, x := range r {
		lines[i] = Sample{Name: x.Labels["__name__"], Labels: without(x.Labels, "__name__", "instance", "job"), Value: x.Value}.String()
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func describeProm(alerts []PromAlert) string {
	if len(alerts) == 0 {
		return "none"
	}
	lines := make([]string, len(alerts))
	for i, a := range alerts {
		lines[i] = a.String()
	}
	return strings.Join(lines, "\n")
}

func without(m map[string]string, drop ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if !contains(drop, k) {
			out[k] = v
		}
	}
	return out
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func boolKeys(m map[string]bool) map[string]string {
	out := map[string]string{}
	for k := range m {
		out[k] = ""
	}
	return out
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }
