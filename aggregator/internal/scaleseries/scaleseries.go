// Package scaleseries generates what two aggregator replicas would export
// for a simulated large cluster under a fault, as promtool test input: the
// agents' reports of every node are built here, and the real diagnosis
// (package analyzer) and metrics collector (package metrics) turn them
// into the series, so the alert rules are tested on the shapes the
// aggregator really exports at 5,000 nodes, not on hand-written ones.
//
// aggregator/rules_scale_test.go runs it for each scenario and asserts
// with promtool how many alerts fire per scope.
package scaleseries

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/metrics"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

// Shape is the simulated cluster. Image j comes from registry j mod
// Registries; the first Mirrored registries are pulled through one mirror
// (https://mirror.example/v2) before their upstream. Node i is in zone
// i mod Zones; every image is in use on every node.
type Shape struct {
	Nodes, Images, Registries, Zones, Mirrored int
}

// Issue23 is the shape of issue 23's measurement: 5,000 nodes × 100
// images from 20 registries in 3 zones (5 registries behind a mirror).
var Issue23 = Shape{Nodes: 5000, Images: 100, Registries: 20, Zones: 3, Mirrored: 5}

// NodeFault is what goes wrong on one node.
type NodeFault struct {
	// Lost are the registries (indexes) no endpoint of which answers.
	Lost []int
	// MirrorDown: the mirror answers nothing; the upstreams do.
	MirrorDown bool
	// Stale: the agent went silent longer than --stale-after ago.
	Stale bool
	// Never: the agent never reported (its Node is Ready in the API).
	Never bool
}

// Scenario is a fault across the cluster.
type Scenario struct {
	Name string
	// Node says what goes wrong on node i of zone z; nil: nothing.
	Node func(i, z int) NodeFault
	// Absent are images (indexes) deleted from their registry; Refused,
	// images their registry refuses (401). On every node.
	Absent, Refused []int
}

// Names of the simulated objects.
func NodeName(i int) string     { return fmt.Sprintf("node-%04d", i) }
func ZoneName(z int) string     { return "zone-" + string(rune('a'+z)) }
func RegistryName(r int) string { return fmt.Sprintf("reg-%02d.example", r) }
func imageName(sh Shape, j int) string {
	return fmt.Sprintf("%s/team-%d/app-%03d:1", RegistryName(j%sh.Registries), j%7, j)
}

const mirrorURL = "https://mirror.example/v2"

var (
	roleMirror   = pullwatchv1.EndpointRole_ENDPOINT_ROLE_MIRROR
	roleUpstream = pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM
	available    = pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE
	unreachable  = pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE
	absent       = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
	unauthorized = pullwatchv1.ImageStatus_IMAGE_STATUS_UNAUTHORIZED
)

// images returns a node's reports under fault f; nodes with the same
// fault share them (the store never modifies reports).
func images(sh Shape, sc Scenario, f NodeFault) []*pullwatchv1.ImageReport {
	out := make([]*pullwatchv1.ImageReport, 0, sh.Images)
	for j := range sh.Images {
		r := j % sh.Registries
		// What the registry says when reached.
		st, code := available, int32(200)
		switch {
		case slices.Contains(sc.Absent, j):
			st, code = absent, 404
		case slices.Contains(sc.Refused, j):
			st, code = unauthorized, 401
		}
		lost := slices.Contains(f.Lost, r)
		down := pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE
		var eps []*pullwatchv1.EndpointResult
		upstream := &pullwatchv1.EndpointResult{Url: "https://" + RegistryName(r) + "/v2", Role: roleUpstream, Status: st, HttpStatus: code}
		if lost {
			upstream.Status, upstream.HttpStatus, upstream.Reason = down, 0, "dial tcp: i/o timeout"
		}
		if r < sh.Mirrored {
			m := &pullwatchv1.EndpointResult{Url: mirrorURL, Role: roleMirror, Status: st, HttpStatus: code}
			if lost || f.MirrorDown {
				m.Status, m.HttpStatus, m.Reason = down, 0, "connection refused"
			} else {
				// The mirror answered: the runtime never tries the upstream.
				upstream = &pullwatchv1.EndpointResult{Url: upstream.Url, Role: roleUpstream, Status: pullwatchv1.ImageStatus_IMAGE_STATUS_UNKNOWN, Skipped: true}
			}
			eps = append(eps, m)
		}
		eps = append(eps, upstream)
		imSt := st
		if lost {
			imSt = unreachable
		}
		out = append(out, &pullwatchv1.ImageReport{
			Image: imageName(sh, j), Registry: RegistryName(r), Status: imSt, InUse: true, Endpoints: eps,
		})
	}
	return out
}

// Store returns the aggregator's state after every node reported under
// sc, as one replica holds it.
func Store(sh Shape, sc Scenario) *state.Store {
	t0 := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	now := t0
	s := state.New(3*time.Minute, state.WithClock(func() time.Time { return now }))
	shared := map[string][]*pullwatchv1.ImageReport{}
	var stale, fresh []*pullwatchv1.NodeSnapshot
	for i := range sh.Nodes {
		z := i % sh.Zones
		var f NodeFault
		if sc.Node != nil {
			f = sc.Node(i, z)
		}
		key := fmt.Sprint(f.Lost, f.MirrorDown)
		ims, ok := shared[key]
		if !ok {
			ims = images(sh, sc, f)
			shared[key] = ims
		}
		if f.Never {
			continue
		}
		snap := &pullwatchv1.NodeSnapshot{
			Node:   &pullwatchv1.Node{Name: NodeName(i), Labels: map[string]string{"topology.kubernetes.io/zone": ZoneName(z)}},
			Images: ims,
		}
		if f.Stale {
			stale = append(stale, snap)
		} else {
			fresh = append(fresh, snap)
		}
	}
	// The silent agents' last reports are 4 minutes old (stale after 3).
	for _, snap := range stale {
		s.ApplySnapshot(snap)
	}
	now = t0.Add(4 * time.Minute)
	for _, snap := range fresh {
		s.ApplySnapshot(snap)
		s.Attach(snap.GetNode().GetName(), nil) // its stream is up
	}
	return s
}

// Series are one replica's exported series in promtool's notation
// (name{labels}), with their values; summaries are left out.
type Series struct {
	Name  string
	Value float64
}

// Collect gathers what one replica exports for sc, with the shipped
// defaults (--node-image-series and --node-endpoint-series failing).
func Collect(sh Shape, sc Scenario) ([]Series, error) {
	s := Store(sh, sc)
	an := analyzer.NewAnalyzer(s, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// The API's Nodes: every simulated node, Ready.
	nodes := make([]metrics.APINode, sh.Nodes)
	for i := range nodes {
		nodes[i] = metrics.APINode{Name: NodeName(i), Ready: true}
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(metrics.NewCollector(s, an, metrics.Config{
		NodeImageSeries: metrics.NodeImageSeriesFailing, NodeEndpointSeries: metrics.NodeEndpointSeriesFailing,
		APINodes: func() ([]metrics.APINode, bool) { return nodes, true },
	})); err != nil {
		return nil, fmt.Errorf("register the collector: %w", err)
	}
	an.Analyze(context.Background())
	mfs, err := reg.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather %s: %w", sc.Name, err)
	}
	var out []Series
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var v float64
			switch mf.GetType() {
			case dto.MetricType_GAUGE:
				v = m.GetGauge().GetValue()
			case dto.MetricType_COUNTER:
				v = m.GetCounter().GetValue()
			default:
				continue
			}
			out = append(out, Series{Name: mf.GetName() + labels(m.GetLabel()), Value: v})
		}
	}
	return out, nil
}

func labels(ls []*dto.LabelPair) string {
	var b strings.Builder
	b.WriteByte('{')
	for k, l := range ls {
		if k > 0 {
			b.WriteByte(',')
		}
		b.WriteString(l.GetName() + "=" + strconv.Quote(l.GetValue()))
	}
	b.WriteByte('}')
	return b.String()
}

// Replicas is the number of aggregator replicas the input holds.
const Replicas = 2

// WriteInput writes promtool input_series for Replicas replicas that
// export series unchanged for minutes+1 samples, one a minute, indented
// for a test case's input_series list.
func WriteInput(w io.Writer, series []Series, minutes int) error {
	for rep := range Replicas {
		inst := fmt.Sprintf(`instance="10.0.0.%d:8080",pod="pullwatch-aggregator-%c",`, 5+rep, 'a'+rep)
		for _, s := range series {
			name := strings.Replace(s.Name, "{", "{"+inst, 1)
			name = strings.Replace(name, ",}", "}", 1)
			if _, err := fmt.Fprintf(w, "      - series: '%s'\n        values: '%sx%d'\n", name, strconv.FormatFloat(s.Value, 'g', -1, 64), minutes); err != nil {
				return fmt.Errorf("write input: %w", err)
			}
		}
	}
	return nil
}

// CountAlerts returns the expected samples of
// count by (alertname) (ALERTS{alertstate="firing"}) for a promtool
// promql_expr_test, sorted by alert name.
func CountAlerts(want map[string]int) []string {
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, fmt.Sprintf("          - labels: '{alertname=%q}'\n            value: %d\n", n, want[n]))
	}
	return out
}
