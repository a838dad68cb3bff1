package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/dashboards"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
)

// TestAggregatorDashboardQueries: a real Prometheus scrapes a real
// aggregator fed by the real agent on the lab node (with an available, an
// absent and an unreachable image in use), loads the shipped alerting
// rules, and every PromQL query of the Grafana dashboards — panels and
// variables, with $node set to the lab node — parses and returns data.
// The rules evaluate without error, and the alert expressions pick out
// what the scenario broke.
func TestAggregatorDashboardQueries(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const node = "dash-node"
	s := l.StartScenario(t, "aggdash", node)

	// Wait for the diagnosis of the stopped registry: one node, so every
	// node fails it (cluster scope).
	wantFailure := regexp.MustCompile(fmt.Sprintf(`(?m)^pullwatch_registry_failure\{endpoint="[^"]+",registry=%q,scope="cluster"\} 1$`, s.DeadRegistry))
	lab.WaitFor(t, 30*time.Second, "the registry failure on /metrics", func() (bool, string) {
		_, body := lab.HTTPGet(s.MetricsURL())
		return wantFailure.MatchString(body), "missing " + wantFailure.String() + "\n" + lab.GrepLines(body, "pullwatch_registry_failure") + "\n" + lab.GrepLines(body, "pullwatch_node_endpoint")
	}, s.Agent, s.Agg)

	root, err := checkout.Root()
	if err != nil {
		t.Fatal(err)
	}
	prom, err := prometheus.Start(ctx, t.TempDir(), []string{s.HTTPAddr}, prometheus.Options{
		RuleFiles: []string{filepath.Join(root, "deploy", "rules", "pullwatch.rules.yaml")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prom.Stop() })
	if _, err := prom.WaitForQuery(ctx, `pullwatch_registry_failure`, nil, 30*time.Second); err != nil {
		t.Fatalf("prometheus never scraped the registry failure: %v", err)
	}

	t.Run("endpoint latency across nodes", func(t *testing.T) {
		// One live node: each endpoint's summary over nodes is that node's
		// own latency, at every quantile.
		q := `max by (endpoint) (pullwatch_endpoint_latency_seconds{quantile="1"}) - on (endpoint) max by (endpoint) (pullwatch_node_endpoint_latency_seconds)`
		samples, err := prom.WaitForQuery(ctx, q, nil, 20*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		for _, smp := range samples {
			if smp.Value != 0 {
				t.Errorf("%v: the slowest node's latency differs from the node's by %v", smp.Labels, smp.Value)
			}
		}
		if _, err := prom.WaitForQuery(ctx, `pullwatch_endpoint_latency_seconds_count == 1`, nil, 20*time.Second); err != nil {
			t.Errorf("no endpoint counted over its one node: %v", err)
		}
	})

	t.Run("dashboard queries", func(t *testing.T) {
		paths, err := dashboards.Files(root)
		if err != nil {
			t.Fatal(err)
		}
		vars := dashboards.Variables(node)
		for _, p := range paths {
			queries, err := dashboards.Read(p)
			if err != nil {
				t.Fatal(err)
			}
			// The node dashboard must show data for the lab node; the
			// cluster overview's failure panels need the Kubernetes API
			// and zones (e2e/installed checks them on real kubelets):
			// here its queries must run.
			needData := filepath.Base(p) == "pullwatch-node.json"
			for _, q := range queries {
				expr := vars.Replace(q.Expr)
				if !needData {
					if _, err := prom.Query(ctx, expr); err != nil {
						t.Errorf("%s: %s: %s: %v", filepath.Base(p), q.Where, expr, err)
					}
					continue
				}
				samples, err := prom.WaitForQuery(ctx, expr, nil, 20*time.Second)
				if err != nil {
					t.Errorf("%s: %s: %s: no data: %v", filepath.Base(p), q.Where, expr, err)
					continue
				}
				t.Logf("%s: %s: %d series", filepath.Base(p), q.Where, len(samples))
			}
		}
	})

	t.Run("rules load and evaluate", func(t *testing.T) {
		// Each rule is evaluated every second; give them a few rounds.
		var last string
		deadline := time.Now().Add(20 * time.Second)
		for {
			ok, detail := rulesHealthy(ctx, prom.URL())
			if ok {
				break
			}
			last = detail
			if time.Now().After(deadline) {
				t.Fatalf("rules not all healthy: %s", last)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})

	t.Run("alert expressions", func(t *testing.T) {
		exprs := alertExprs(t, filepath.Join(root, "deploy", "rules", "pullwatch.rules.yaml"))
		tests := []struct {
			alert string
			want  map[string]string // labels of one expected sample; nil: no sample
		}{
			// The lab node is the only node: the stopped registry fails
			// from every node, so it is an outage, not a node problem.
			{"PullwatchRegistryOutage", map[string]string{"registry": s.DeadRegistry}},
			{"PullwatchImageAbsent", map[string]string{"image": s.Gone, "status": "absent"}},
			{"PullwatchRegistryUnreachableFromNode", nil},
			{"PullwatchRegistryUnreachableFromZone", nil},
			{"PullwatchImageUnavailableOnNode", nil},
			{"PullwatchMirrorDown", nil},
			{"PullwatchAgentMissing", nil},
			{"PullwatchAggregatorDown", nil},
		}
		for _, tt := range tests {
			expr, ok := exprs[tt.alert]
			if !ok {
				t.Errorf("no alert %s in the rules", tt.alert)
				continue
			}
			if tt.want == nil {
				samples, err := prom.Query(ctx, expr)
				if err != nil {
					t.Errorf("%s: %v", tt.alert, err)
				} else if len(samples) != 0 {
					t.Errorf("%s: %d samples, want none: %+v", tt.alert, len(samples), samples)
				}
				continue
			}
			// The alerts read recording rules: wait for their first
			// evaluation over the scraped data.
			found := func(samples []prometheus.Sample) bool {
				for _, smp := range samples {
					match := true
					for k, v := range tt.want {
						match = match && smp.Labels[k] == v
					}
					if match {
						return true
					}
				}
				return false
			}
			if samples, err := prom.WaitForQuery(ctx, expr, found, 20*time.Second); err != nil {
				t.Errorf("%s: no sample with %v in %+v: %v", tt.alert, tt.want, samples, err)
			}
		}
	})

	t.Run("compatibility metrics", func(t *testing.T) {
		// Without the Kubernetes API the workload is the pod.
		for container, family := range map[string]string{"ok": "available", "gone": "absent", "dead": "registry_unavailable"} {
			expr := fmt.Sprintf(`k8s_image_availability_exporter_%s{namespace=%q,container=%q,kind="pod",name=%q}`, family, s.Namespace, container, s.Pod)
			if _, err := prom.WaitForQuery(ctx, expr, func(smp []prometheus.Sample) bool { return len(smp) == 1 && smp[0].Value == 1 }, 10*time.Second); err != nil {
				t.Errorf("container %s: %v", container, err)
			}
			other := fmt.Sprintf(`sum(k8s_image_availability_exporter_unknown_error{namespace=%q,container=%q})`, s.Namespace, container)
			if smp, err := prom.Query(ctx, other); err != nil || len(smp) != 1 || smp[0].Value != 0 {
				t.Errorf("container %s: %s = %+v (%v), want 0", container, other, smp, err)
			}
		}
	})
}

// rulesHealthy reports whether every rule group has been evaluated and
// every rule's health is ok.
func rulesHealthy(ctx context.Context, promURL string) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, promURL+"/api/v1/rules", nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return false, fmt.Sprintf("%v: %s", err, body)
	}
	if len(r.Data.Groups) == 0 {
		return false, "no rule groups loaded: " + string(body)
	}
	var bad []string
	n := 0
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			n++
			if rule.Health != "ok" {
				bad = append(bad, fmt.Sprintf("%s: health %q %s", rule.Name, rule.Health, rule.LastError))
			}
		}
	}
	if n == 0 {
		return false, "no rules"
	}
	return len(bad) == 0, strings.Join(bad, "; ")
}

// alertExprs reads alert name → expr from a rules file. The file's layout
// is ours (deploy/rules), so a small line parser is enough: "- alert:
// Name" followed by "expr: |" and its indented block.
func alertExprs(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		name, ok := strings.CutPrefix(strings.TrimSpace(lines[i]), "- alert: ")
		if !ok {
			continue
		}
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "expr: |"; i++ {
		}
		if i == len(lines) {
			t.Fatalf("%s: alert %s has no block expr", path, name)
		}
		indent := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
		var expr []string
		for i++; i < len(lines); i++ {
			if strings.TrimSpace(lines[i]) != "" && len(lines[i])-len(strings.TrimLeft(lines[i], " ")) <= indent {
				break
			}
			expr = append(expr, strings.TrimSpace(lines[i]))
		}
		i--
		out[name] = strings.Join(expr, "\n")
	}
	return out
}
