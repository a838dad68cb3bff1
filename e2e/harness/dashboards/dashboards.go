// Package dashboards reads the PromQL out of the shipped Grafana dashboards
// (deploy/grafana/*.json), so that tests can run every panel's and every
// variable's query against a real Prometheus.
package dashboards

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Query is one PromQL query of a dashboard.
type Query struct {
	// Panel is the panel's title; empty for a variable.
	Panel string
	// Where says which panel target or variable it is, for messages.
	Where string
	Expr  string
}

type panel struct {
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type dashboard struct {
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

var labelValues = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// Read returns the queries of the dashboard file: every panel target's
// (rows' nested panels included), then every query variable's, with
// label_values(expr, label) turned into count by (label) (expr).
func Read(path string) ([]Query, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read dashboard: %w", err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("dashboard %s: %w", path, err)
	}
	var out []Query
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for i, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) != "" {
					out = append(out, Query{Panel: p.Title, Where: fmt.Sprintf("panel %q target %d", p.Title, i), Expr: tg.Expr})
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		if mm := labelValues.FindStringSubmatch(strings.TrimSpace(q)); mm != nil {
			q = fmt.Sprintf("count by (%s) (%s)", mm[2], mm[1])
		}
		if q == "" {
			return nil, fmt.Errorf("dashboard %s: variable %s has no query", path, v.Name)
		}
		out = append(out, Query{Where: "variable " + v.Name, Expr: q})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("dashboard %s (%q) has no queries", path, d.Title)
	}
	return out, nil
}

// Dir is where the dashboards are, from the repository root.
const Dir = "deploy/grafana"

// Files returns the dashboard files under root's Dir.
func Files(root string) ([]string, error) {
	paths, err := filepath.Glob(filepath.Join(root, Dir, "*.json"))
	if err != nil || len(paths) == 0 {
		return nil, fmt.Errorf("no dashboards in %s (%v)", Dir, err)
	}
	return paths, nil
}

// Variables fills the dashboards' variables for a query: $node with node,
// and $cluster, $zone and $registry with "All" (.*).
func Variables(node string) *strings.Replacer {
	return strings.NewReplacer("$node", node, "$cluster", ".*", "$zone", ".*", "$registry", ".*")
}
