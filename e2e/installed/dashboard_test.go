package installed

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/dashboards"
)

// healthyData are, per dashboard, the panels and variables that must
// return series on a healthy box (every node reporting, nothing failing):
// the others show failures, risks, rate limits or sharding, and have
// none then — their queries must still run without error.
// TestAgentNeverReportedInstalled checks the not-reporting panel with data.
var healthyData = map[string][]string{
	"pullwatch-cluster.json": {
		"Containers that would fail to (re)start", "Containers safe from the node's cache",
		"Endpoint latency across nodes (p90)", "Nodes using each endpoint",
		"Nodes by agent state", "Fresh nodes per aggregator replica",
		"Agent reports accepted per second", "Agent reports refused per second",
		"variable cluster", "variable zone", "variable registry",
	},
	"pullwatch-node.json": {
		"Last report", "Agent state", "Images not available on this node", "variable node",
	},
}

// TestDashboardQueriesInstalled: every panel's and variable's query of
// both dashboards runs against the box's real Prometheus (which scrapes
// the installed aggregator through the Kubernetes API) without error, and
// those that describe a healthy cluster return series.
func TestDashboardQueriesInstalled(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	waitFresh(ctx, t, len(c.Nodes))
	root, err := checkout.Root()
	if err != nil {
		t.Fatal(err)
	}
	paths, err := dashboards.Files(root)
	if err != nil {
		t.Fatal(err)
	}
	vars := dashboards.Variables(c.Nodes[0].Name())
	for _, p := range paths {
		file := filepath.Base(p)
		want, known := healthyData[file]
		if !known {
			t.Errorf("%s: no entry in healthyData", file)
		}
		wantData := map[string]bool{}
		for _, w := range want {
			wantData[w] = true
		}
		queries, err := dashboards.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, q := range queries {
			name := q.Panel
			if name == "" {
				name = q.Where
			}
			seen[name] = true
			expr := vars.Replace(q.Expr)
			if !wantData[name] {
				s, err := prom.Query(ctx, expr)
				if err != nil {
					t.Errorf("%s: %s: %v", file, q.Where, err)
				}
				t.Logf("%s: %s: %d series (none needed on a healthy box)", file, q.Where, len(s))
				continue
			}
			s, err := prom.WaitForQuery(ctx, expr, nil, 30*time.Second)
			if err != nil {
				t.Errorf("%s: %s: no data: %v", file, q.Where, err)
				continue
			}
			t.Logf("%s: %s: %d series", file, q.Where, len(s))
		}
		for _, w := range want {
			if !seen[w] {
				t.Errorf("%s: no panel or variable %q", file, w)
			}
		}
	}
}

// panelQuery returns the query of the dashboard's panel, variables filled.
func panelQuery(t *testing.T, file, title, node string) string {
	t.Helper()
	root, err := checkout.Root()
	if err != nil {
		t.Fatal(err)
	}
	queries, err := dashboards.Read(filepath.Join(root, dashboards.Dir, file))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range queries {
		if q.Panel == title {
			return dashboards.Variables(node).Replace(q.Expr)
		}
	}
	t.Fatalf("%s: no panel %q", file, title)
	return ""
}
