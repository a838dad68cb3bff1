package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// PromAlert is an alert as Prometheus's /api/v1/alerts lists it.
type PromAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"` // pending or firing
	ActiveAt    time.Time         `json:"activeAt"`
	Value       string            `json:"value"`
}

// Name is the alertname label.
func (a PromAlert) Name() string { return a.Labels["alertname"] }

// String is "Name{label=value,...} state".
func (a PromAlert) String() string {
	keys := make([]string, 0, len(a.Labels))
	for k := range a.Labels {
		if k != "alertname" && k != "severity" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	ls := make([]string, len(keys))
	for i, k := range keys {
		ls[i] = k + "=" + a.Labels[k]
	}
	return a.Name() + "{" + strings.Join(ls, ",") + "} " + a.State
}

// PromAlerts returns the pending and firing alerts Prometheus has now.
func (c *Cluster) PromAlerts(ctx context.Context) ([]PromAlert, error) {
	if c.PrometheusAddr == "" {
		return nil, fmt.Errorf("cluster: no Prometheus")
	}
	body, err := httpGet(ctx, "http://"+c.PrometheusAddr+"/api/v1/alerts")
	if err != nil {
		return nil, err
	}
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Alerts []PromAlert `json:"alerts"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return nil, fmt.Errorf("prometheus /api/v1/alerts: %w", err)
	}
	sort.Slice(r.Data.Alerts, func(i, j int) bool { return r.Data.Alerts[i].String() < r.Data.Alerts[j].String() })
	return r.Data.Alerts, nil
}

// Summary renders what the aggregator says now, readable on a terminal:
// per node (agent freshness and each registry endpoint), per image (its
// status on each node), the diagnosis (failure scopes), and Prometheus's
// pending and firing alerts.
func (c *Cluster) Summary(ctx context.Context) (string, error) {
	m, err := c.Aggregator.Metrics(ctx)
	if err != nil {
		return "", fmt.Errorf("aggregator metrics: %w", err)
	}
	var b strings.Builder
	nodes := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		nodes[i] = n.Name
	}

	// Endpoints, upstream first then mirrors, by URL.
	type ep struct{ registry, url, role string }
	seen := map[ep]bool{}
	var eps []ep
	for _, s := range m.Select("pullwatch_node_endpoint_up", nil) {
		e := ep{s.Labels["registry"], s.Labels["endpoint"], s.Labels["role"]}
		if !seen[e] {
			seen[e] = true
			eps = append(eps, e)
		}
	}
	sort.Slice(eps, func(i, j int) bool {
		if eps[i].role != eps[j].role {
			return eps[i].role == "mirror" // the order the runtime tries them
		}
		return eps[i].url < eps[j].url
	})

	fmt.Fprintf(&b, "NODES (agent freshness; endpoint reachability from each node, in the runtime's order)\n")
	tw := tabwriter.NewWriter(&b, 2, 4, 3, ' ', 0)
	hdr := []string{"NODE", "ADDRESS", "AGENT"}
	for _, e := range eps {
		hdr = append(hdr, strings.ToUpper(e.role)+" "+strings.TrimSuffix(e.url, "/v2"))
	}
	fmt.Fprintln(tw, strings.Join(hdr, "\t"))
	now := time.Now()
	for _, n := range c.Nodes {
		row := []string{n.Name, n.NS.IP().String()}
		agent := "no report"
		if v, ok := m.Value("pullwatch_node_stale", map[string]string{"node": n.Name}); ok {
			agent = "fresh"
			if v == 1 {
				agent = "STALE"
			}
			if ts, ok := m.Value("pullwatch_agent_last_report_timestamp_seconds", map[string]string{"node": n.Name}); ok {
				agent += fmt.Sprintf(" (%s ago)", now.Sub(time.Unix(0, int64(ts*1e9))).Round(time.Second))
			}
		}
		row = append(row, agent)
		for _, e := range eps {
			labels := map[string]string{"node": n.Name, "endpoint": e.url, "role": e.role, "registry": e.registry}
			cell := "-"
			if v, ok := m.Value("pullwatch_node_endpoint_up", labels); ok {
				cell = "up"
				if v == 0 {
					cell = "DOWN"
				}
				if lat, ok := m.Value("pullwatch_node_endpoint_latency_seconds", labels); ok && v == 1 {
					cell += fmt.Sprintf(" (%s)", time.Duration(lat*float64(time.Second)).Round(100*time.Microsecond))
				}
			}
			row = append(row, cell)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	_ = tw.Flush()

	fmt.Fprintf(&b, "\nIMAGES (status on each node; * = a container on the node uses it)\n")
	tw = tabwriter.NewWriter(&b, 2, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\t"+strings.ToUpper(strings.Join(nodes, "\t")))
	images := map[string]bool{}
	for _, s := range m.Select("pullwatch_node_image_status", nil) {
		images[s.Labels["image"]] = true
	}
	for _, im := range sortedSet(images) {
		row := []string{im}
		for _, n := range nodes {
			cell := "-"
			for _, s := range m.Select("pullwatch_node_image_status", map[string]string{"node": n, "image": im}) {
				if s.Value == 1 {
					cell = s.Labels["status"]
					if cell != "available" {
						cell = strings.ToUpper(cell)
					}
				}
			}
			if v, ok := m.Value("pullwatch_node_image_in_use", map[string]string{"node": n, "image": im}); ok && v == 1 {
				cell += "*"
			}
			row = append(row, cell)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	_ = tw.Flush()

	fmt.Fprintf(&b, "\nDIAGNOSIS (where each failure lies, from all nodes' latest results)\n")
	var diag []string
	for _, s := range m.Select("pullwatch_registry_failure", nil) {
		diag = append(diag, fmt.Sprintf("  %-7s registry %s, %s: does not answer %g node(s)", strings.ToUpper(s.Labels["scope"]), s.Labels["registry"], s.Labels["endpoint"], s.Value))
	}
	for _, s := range m.Select("pullwatch_image_failure", nil) {
		diag = append(diag, fmt.Sprintf("  %-7s image %s: not available on %g node(s)", strings.ToUpper(s.Labels["scope"]), s.Labels["image"], s.Value))
	}
	sort.Strings(diag)
	if len(diag) > 0 {
		b.WriteString(strings.Join(diag, "\n") + "\n")
	} else {
		b.WriteString("  nothing fails (no pullwatch_registry_failure or pullwatch_image_failure series)\n")
	}

	if c.PrometheusAddr != "" {
		fmt.Fprintf(&b, "\nALERTS (Prometheus %s", c.PrometheusAddr)
		if c.AlertFor != "" {
			fmt.Fprintf(&b, "; every for: shortened to %s", c.AlertFor)
		}
		b.WriteString(")\n")
		alerts, err := c.PromAlerts(ctx)
		switch {
		case err != nil:
			fmt.Fprintf(&b, "  cannot ask Prometheus: %v\n", err)
		case len(alerts) == 0:
			b.WriteString("  none pending or firing\n")
		}
		for _, a := range alerts {
			line := "  " + a.String()
			if a.State == "pending" {
				if f := c.forOf(a.Name()); f != "" {
					line += " (fires once it has held for " + f + ")"
				}
			}
			if s := a.Annotations["summary"]; s != "" {
				line += "\n      " + s
			}
			b.WriteString(line + "\n")
		}
	}
	return b.String(), nil
}

// forOf is the for: Prometheus applies to the alert.
func (c *Cluster) forOf(alert string) string {
	if c.AlertFor != "" {
		return c.AlertFor
	}
	return c.ShippedFor[alert]
}

func sortedSet(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
