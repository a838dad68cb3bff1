package shard

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	keysDesc = prometheus.NewDesc("pullwatch_probe_keys",
		"Distinct manifest checks (reference, credential source, endpoints) the nodes have, each HEADed by --probe-replicas nodes per interval.", nil, nil)
	plannedDesc = prometheus.NewDesc("pullwatch_probe_planned_heads",
		"Manifest HEADs per interval the probe plan asks of all nodes together, per registry host (before the budget factor).", []string{"registry"}, nil)
	factorDesc = prometheus.NewDesc("pullwatch_registry_budget_factor",
		"Share of its planned manifest HEADs a node may send to the registry per interval under --registry-budget (1: the plan fits the budget).", []string{"registry"}, nil)
	holdDesc = prometheus.NewDesc("pullwatch_registry_hold_seconds",
		"Seconds until nodes may HEAD manifests at the registry again, after it answered 429 with Retry-After (0 series: no hold).", []string{"registry"}, nil)
	ratelimitDesc = prometheus.NewDesc("pullwatch_registry_ratelimit_remaining",
		"The registry's ratelimit-remaining header (Docker Hub: pulls left in its window) as the node's own last manifest HEAD got it. Per node: the budget is per egress IP.", []string{"node", "registry"}, nil)
	holdsByNodeDesc = prometheus.NewDesc("pullwatch_registry_holds_total",
		"429 answers with Retry-After that held a registry, per reporting node: only a key's chosen probers hold a registry, each for at most 15 minutes. A node with many is rate-limited, or lying.", []string{"node"}, nil)
	recomputeDesc = prometheus.NewDesc("pullwatch_probe_assignment_recomputes_total",
		"Times the probers of a key were recomputed (node joined, left, or changed images).", nil, nil)
)

// Collector exports the planner's numbers.
type Collector struct{ p *Planner }

// NewCollector returns a Collector over p.
func NewCollector(p *Planner) *Collector { return &Collector{p} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{keysDesc, plannedDesc, factorDesc, holdDesc, ratelimitDesc, holdsByNodeDesc, recomputeDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.p.Stats()
	ch <- prometheus.MustNewConstMetric(keysDesc, prometheus.GaugeValue, float64(s.Keys))
	ch <- prometheus.MustNewConstMetric(recomputeDesc, prometheus.CounterValue, float64(s.Recomputes))
	for h, n := range s.Load {
		ch <- prometheus.MustNewConstMetric(plannedDesc, prometheus.GaugeValue, float64(n), h)
	}
	for h, f := range s.Factor {
		ch <- prometheus.MustNewConstMetric(factorDesc, prometheus.GaugeValue, f, h)
	}
	for h, d := range s.Holds {
		ch <- prometheus.MustNewConstMetric(holdDesc, prometheus.GaugeValue, d.Seconds(), h)
	}
	for n, v := range s.HoldsByNode {
		ch <- prometheus.MustNewConstMetric(holdsByNodeDesc, prometheus.CounterValue, float64(v), n)
	}
	for nh, v := range s.RateLimitRemaining {
		ch <- prometheus.MustNewConstMetric(ratelimitDesc, prometheus.GaugeValue, v, nh[0], nh[1])
	}
}
