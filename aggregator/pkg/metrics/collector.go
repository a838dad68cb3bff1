// Package metrics exports the aggregator's state as Prometheus metrics.
//
// Like kube-state-metrics, the node and image metrics are computed from the
// state store at scrape time by a custom Collector rather than kept in
// gauge vectors: a series exists exactly as long as the state has its
// subject, so nothing has to remember to delete series for images a node
// no longer has.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

var (
	imageStatusDesc = prometheus.NewDesc(
		"pullwatch_node_image_status",
		"Pull status of an image on a node, as the node's agent last reported it: 1 for the current status, one series per node and image. "+
			"status is one of available, absent, unauthorized, forbidden, rate_limited, unreachable, platform_missing, bad_image_format, unknown. "+
			"Stale nodes keep their last status; see pullwatch_node_stale.",
		[]string{"node", "image", "status"}, nil)
	imageInUseDesc = prometheus.NewDesc(
		"pullwatch_node_image_in_use",
		"1 if at least one container on the node (in any state) uses the image, else 0.",
		[]string{"node", "image"}, nil)
	nodeStaleDesc = prometheus.NewDesc(
		"pullwatch_node_stale",
		"1 if the node's agent has not reported for longer than --stale-after, else 0.",
		[]string{"node"}, nil)
	lastReportDesc = prometheus.NewDesc(
		"pullwatch_agent_last_report_timestamp_seconds",
		"Unix time the aggregator last accepted a report from the node's agent.",
		[]string{"node"}, nil)
	endpointUpDesc = prometheus.NewDesc(
		"pullwatch_node_endpoint_up",
		"1 if the registry endpoint answered the node's agent (any HTTP response, whatever the status) for at least one image in its latest results, "+
			"0 if it was tried and never answered (unreachable or unknown). Endpoints the runtime skips for every image have no series.",
		[]string{"node", "registry", "endpoint", "role"}, nil)
	endpointLatencyDesc = prometheus.NewDesc(
		"pullwatch_node_endpoint_latency_seconds",
		"Highest latency of the registry endpoint seen by the node's agent across the images in its latest results. "+
			"No series when no result carries a latency.",
		[]string{"node", "registry", "endpoint", "role"}, nil)
	agentsConnectedDesc = prometheus.NewDesc(
		"pullwatch_agents_connected",
		"Number of agent report streams currently open.",
		nil, nil)
	nodesDesc = prometheus.NewDesc(
		"pullwatch_nodes",
		"Number of nodes the aggregator has state for, by state: fresh (reported within --stale-after) or stale.",
		[]string{"state"}, nil)
)

// Collector computes the node, image, endpoint and agent metrics from a
// state store at scrape time.
type Collector struct {
	store *state.Store
}

// NewCollector returns a Collector reading store.
func NewCollector(store *state.Store) *Collector {
	return &Collector{store: store}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		imageStatusDesc, imageInUseDesc, nodeStaleDesc, lastReportDesc,
		endpointUpDesc, endpointLatencyDesc, agentsConnectedDesc, nodesDesc,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	var fresh, stale int
	for _, n := range c.store.Nodes() {
		if n.Stale {
			stale++
		} else {
			fresh++
		}
		collectNode(ch, n)
	}
	ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(fresh), "fresh")
	ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(stale), "stale")
	ch <- prometheus.MustNewConstMetric(agentsConnectedDesc, prometheus.GaugeValue, float64(c.store.ConnectedAgents()))
}

func collectNode(ch chan<- prometheus.Metric, n state.NodeView) {
	ch <- prometheus.MustNewConstMetric(nodeStaleDesc, prometheus.GaugeValue, boolValue(n.Stale), n.Name)
	ch <- prometheus.MustNewConstMetric(lastReportDesc, prometheus.GaugeValue, float64(n.LastReport.UnixNano())/1e9, n.Name)

	endpoints := map[endpointKey]*endpointStats{}
	for _, im := range n.Images {
		// Validation guarantees a valid status, so Word is never empty.
		ch <- prometheus.MustNewConstMetric(imageStatusDesc, prometheus.GaugeValue, 1, n.Name, im.GetImage(), im.GetStatus().Word())
		ch <- prometheus.MustNewConstMetric(imageInUseDesc, prometheus.GaugeValue, boolValue(im.GetInUse()), n.Name, im.GetImage())
		for _, ep := range im.GetEndpoints() {
			if ep.GetSkipped() {
				continue
			}
			// Validation guarantees the role is upstream or mirror.
			key := endpointKey{registry: im.GetRegistry(), url: ep.GetUrl(), role: ep.GetRole().Word()}
			stats := endpoints[key]
			if stats == nil {
				stats = &endpointStats{}
				endpoints[key] = stats
			}
			stats.add(ep)
		}
	}
	for key, stats := range endpoints {
		ch <- prometheus.MustNewConstMetric(endpointUpDesc, prometheus.GaugeValue, boolValue(stats.answered), n.Name, key.registry, key.url, key.role)
		if stats.hasLatency {
			ch <- prometheus.MustNewConstMetric(endpointLatencyDesc, prometheus.GaugeValue, stats.maxLatency, n.Name, key.registry, key.url, key.role)
		}
	}
}

type endpointKey struct {
	registry, url, role string
}

// endpointStats folds one node's results for one endpoint across images.
type endpointStats struct {
	answered   bool
	hasLatency bool
	maxLatency float64 // seconds
}

func (s *endpointStats) add(ep *pullwatchv1.EndpointResult) {
	s.answered = s.answered || answered(ep)
	if ep.GetLatency() != nil {
		s.maxLatency = max(s.maxLatency, ep.GetLatency().AsDuration().Seconds())
		s.hasLatency = true
	}
}

// answered reports whether the registry sent any response. An HTTP status
// proves it; without one, every status except unreachable and unknown
// still describes an answer (absent is a 404, rate_limited a 429, ...).
func answered(ep *pullwatchv1.EndpointResult) bool {
	if ep.GetHttpStatus() != 0 {
		return true
	}
	switch ep.GetStatus() {
	case pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE, pullwatchv1.ImageStatus_IMAGE_STATUS_UNKNOWN:
		return false
	}
	return ep.GetStatus().Valid()
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
