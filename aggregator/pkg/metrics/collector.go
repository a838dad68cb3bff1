// Package metrics exports the aggregator's state as Prometheus metrics.
//
// Like kube-state-metrics, the node and image metrics are computed from the
// state store at scrape time by a custom Collector rather than kept in
// gauge vectors: a series exists exactly as long as the state has its
// subject, so nothing has to remember to delete series for images a node
// no longer has. Every family is documented in docs/metrics.md.
package metrics

import (
	"context"
	"math"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
	"github.com/pullwatch/pullwatch/aggregator/pkg/risk"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

var (
	imageStatusDesc = prometheus.NewDesc(
		"pullwatch_node_image_status",
		"Pull status of an image on a node, as the node's agent last reported it: 1 for the current status, one series per node and image "+
			"(with --node-image-series=failing only for images not available on the node). "+
			"status is one of "+pullwatchv1.StatusWords()+". "+
			"Stale nodes keep their last status; see pullwatch_node_stale.",
		[]string{"node", "image", "status"}, nil)
	imageInUseDesc = prometheus.NewDesc(
		"pullwatch_node_image_in_use",
		"1 if at least one container on the node (in any state) uses the image, else 0. Same series selection as pullwatch_node_image_status.",
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
			"0 if it was tried and never answered (unreachable or unknown). Endpoints the runtime skips for every image have no series. "+
			"With --node-endpoint-series=failing (the default), only the endpoints of registries with an endpoint that does not answer the node.",
		[]string{"node", "registry", "endpoint", "role"}, nil)
	endpointLatencyDesc = prometheus.NewDesc(
		"pullwatch_node_endpoint_latency_seconds",
		"Highest latency of the registry endpoint seen by the node's agent across the images in its latest results. "+
			"No series when no result carries a latency. Same series selection as pullwatch_node_endpoint_up.",
		[]string{"node", "registry", "endpoint", "role"}, nil)
	endpointLatencyQuantileDesc = prometheus.NewDesc(
		"pullwatch_endpoint_latency_seconds",
		"Latency of the registry endpoint across the live nodes that tried it, as a summary over nodes: each node is one observation, its "+
			"pullwatch_node_endpoint_latency_seconds; quantile 0.5, 0.9, 0.99 and 1 (the slowest node), _count the nodes, _sum their latencies. "+
			"One per endpoint, whatever --node-endpoint-series says.",
		[]string{"registry", "endpoint", "role"}, nil)
	agentsConnectedDesc = prometheus.NewDesc(
		"pullwatch_agents_connected",
		"Number of nodes with a live agent report stream: nodes, not streams (a node's newer stream replaces its older one; a stream counts once it has sent its first snapshot).",
		nil, nil)
	agentStreamsDesc = prometheus.NewDesc(
		"pullwatch_agent_streams_open",
		"Agent report streams open now, including those that have not sent a snapshot yet.",
		nil, nil)
	nodesDesc = prometheus.NewDesc(
		"pullwatch_nodes",
		"Number of nodes the aggregator has state for, by state: fresh (reported within --stale-after), stale, "+
			"or unregistered (the Kubernetes API has no Node of that name; only with the API).",
		[]string{"state"}, nil)
	imageNodesDesc = prometheus.NewDesc(
		"pullwatch_image_nodes",
		"Number of live nodes (fresh, and known to the Kubernetes API when it is used) that have the image, by the image's status on them. "+
			"Only statuses some node has get a series.",
		[]string{"image", "status"}, nil)
	imageFailureDesc = prometheus.NewDesc(
		"pullwatch_image_failure",
		"Where an image that is not available on some live node fails: scope node, zone, cluster or image (the registry answered: absent, "+
			"unauthorized, forbidden, platform_missing, bad_image_format). Value: the number of live nodes where it is not available. "+
			"One series per failing image; none for images available everywhere.",
		[]string{"image", "registry", "scope"}, nil)
	registryFailureDesc = prometheus.NewDesc(
		"pullwatch_registry_failure",
		"Where a registry endpoint that does not answer some live node fails: scope node, zone, mirror (a mirror down from every node while the upstream answers) "+
			"or cluster. Value: the number of live nodes it does not answer. One series per failing endpoint; none for endpoints that answer everywhere.",
		[]string{"registry", "endpoint", "scope"}, nil)
	registryUnreachableNodesDesc = prometheus.NewDesc(
		"pullwatch_registry_unreachable_nodes",
		"Live nodes from which no endpoint of the registry answers (they lost the registry), per zone of those nodes (empty: no zone), "+
			"and where the loss lies: scope node, zone or cluster. One series per registry and zone with such nodes; none while every node reaches it.",
		[]string{"registry", "zone", "scope"}, nil)
	nodeUnreachableRegistriesDesc = prometheus.NewDesc(
		"pullwatch_node_unreachable_registries",
		"Registries the live node lost (no endpoint answers it), by the scope of each registry's loss (node, zone or cluster). "+
			"Only nodes that lost one; select scope=\"node\" for the nodes whose own path fails.",
		[]string{"node", "zone", "scope"}, nil)
	nodeFailingImagesDesc = prometheus.NewDesc(
		"pullwatch_node_failing_images",
		"In-use images not available on the live node, by the scope of each image's failure (node, zone, cluster or image). "+
			"Only nodes with such images; select scope=\"node\" for failures of the node's own.",
		[]string{"node", "zone", "scope"}, nil)
	imageFailureInUseDesc = prometheus.NewDesc(
		"pullwatch_image_failure_in_use_nodes",
		"Live nodes where the image is not available and a container uses it, with the image's registry and failure scope as in pullwatch_image_failure. "+
			"Only failing images some container uses.",
		[]string{"image", "registry", "scope"}, nil)
	nodeNotReportingDesc = prometheus.NewDesc(
		"pullwatch_node_not_reporting",
		"1 for a node whose agent should report and does not: reason stale (it reported, then went silent for longer than --stale-after) "+
			"or never (with the Kubernetes API: a Ready, non-Windows Node whose agent never reported). Only such nodes have a series.",
		[]string{"node", "reason"}, nil)
	apiNodesDesc = prometheus.NewDesc(
		"pullwatch_api_nodes",
		"The Kubernetes API's Nodes by whether their agent reports: reporting (a report, fresh or stale; or too early to tell: "+
			"the aggregator or the Node younger than --first-report-timeout), not_reporting (Ready Linux nodes "+
			"whose agent never reported), not_ready (NotReady nodes without a report), windows (not monitored: no agent runs there). "+
			"Per zone (topology.kubernetes.io/zone; empty: none). Only with the API, once its node list is loaded.",
		[]string{"state", "zone"}, nil)
)

// Owners resolves the workload behind a pod for the compatibility
// metrics; kubewatch.Watcher implements it.
type Owners interface {
	// OwnersSynced reports whether Workload's answers are final.
	OwnersSynced() bool
	// Workload returns the lowercase kind and the name of the pod's
	// workload (the pod itself when it has no controller).
	Workload(namespace, pod string) (kind, name string)
	// ContainerImage returns the container's image as the pod spec
	// writes it, or "" when unknown.
	ContainerImage(namespace, pod, container string) string
}

// Placement is where the Kubernetes API has pods (kubewatch.Watcher).
// When Owners also implements it, a node's containers make compatibility
// series only for pods the API shows bound to that node with the UID the
// agent reports: no node can mint series for workloads that are not on it.
type Placement interface {
	// PodOn reports whether the API has the pod bound to node, with uid.
	PodOn(namespace, pod, uid, node string) bool
}

// The values of Config.NodeImageSeries (and of --node-image-series).
const (
	// NodeImageSeriesAll exports per-node image series for every image.
	NodeImageSeriesAll = "all"
	// NodeImageSeriesFailing exports them only for images not available
	// on the node; the cluster-wide image series stay complete.
	NodeImageSeriesFailing = "failing"
)

// The values of Config.NodeEndpointSeries (and of --node-endpoint-series).
const (
	// NodeEndpointSeriesAll exports per-node endpoint series for every
	// endpoint a node tried.
	NodeEndpointSeriesAll = "all"
	// NodeEndpointSeriesFailing exports them only for the registries
	// with an endpoint that does not answer the node: every endpoint of
	// such a registry, so that max by (node, registry) still tells a
	// node that lost the registry from one that lost a mirror of it.
	NodeEndpointSeriesFailing = "failing"
)

// Config selects what the Collector exports.
type Config struct {
	// NodeImageSeries is NodeImageSeriesAll (default) or
	// NodeImageSeriesFailing.
	NodeImageSeries string
	// NodeEndpointSeries is NodeEndpointSeriesAll (default) or
	// NodeEndpointSeriesFailing.
	NodeEndpointSeries string
	// Compat turns on the k8s_image_availability_exporter_* families:
	// CompatCurrent, CompatLegacy, CompatBoth; "" or CompatOff: none.
	CompatSchema string
	// Risk returns the latest risk assessment (analyzer.Analyzer.Risk),
	// read after each analysis; nil (or a nil answer): no risk series.
	Risk func() *risk.Assessment
	// Owners resolves pods to workloads for Compat; nil without the
	// Kubernetes API (kind pod, name the pod).
	Owners Owners
	// APINodes returns the Kubernetes API's Nodes, and false until they
	// are loaded; nil without the API (no never-reporting nodes known).
	APINodes func() ([]APINode, bool)
	// NeverReportedAfter is how long the aggregator must have run, and a
	// Node have existed, before a Node without a report counts as never
	// reporting (the aggregator's --first-report-timeout: agents send a
	// snapshot as soon as they connect, also to a restarted aggregator).
	NeverReportedAfter time.Duration
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

// APINode is a Node of the Kubernetes API as pullwatch_api_nodes and
// pullwatch_node_not_reporting{reason="never"} need it.
type APINode struct {
	Name, Zone string
	// Created is the Node's creation time.
	Created time.Time
	// Ready is its Ready condition; Windows, kubernetes.io/os=windows.
	Ready, Windows bool
}

// The states of pullwatch_api_nodes.
var apiNodeStates = []string{"reporting", "not_reporting", "not_ready", "windows"}

// collectAPINodes emits pullwatch_api_nodes and the never-reporting
// nodes: Nodes of the API without a report from their agent, once the
// aggregator has run, and the Node existed, for longer than grace before
// now (until then they count as reporting: too early to tell).
func collectAPINodes(ch chan<- prometheus.Metric, r *diagnose.Report, nodes []APINode, started, now time.Time, grace time.Duration) {
	early := now.Sub(started) < grace
	reported := make(map[string]bool, len(r.Nodes))
	for i := range r.Nodes {
		reported[r.Nodes[i].Name] = true
	}
	type stateZone struct{ state, zone string }
	counts := map[stateZone]int{}
	zones := map[string]bool{}
	for _, n := range nodes {
		zones[n.Zone] = true
		switch {
		case reported[n.Name] || early || now.Sub(n.Created) < grace:
			counts[stateZone{"reporting", n.Zone}]++
		case n.Windows:
			counts[stateZone{"windows", n.Zone}]++
		case !n.Ready:
			counts[stateZone{"not_ready", n.Zone}]++
		default:
			counts[stateZone{"not_reporting", n.Zone}]++
			ch <- prometheus.MustNewConstMetric(nodeNotReportingDesc, prometheus.GaugeValue, 1, n.Name, "never")
		}
	}
	for z := range zones {
		for _, st := range apiNodeStates {
			ch <- prometheus.MustNewConstMetric(apiNodesDesc, prometheus.GaugeValue, float64(counts[stateZone{st, z}]), st, z)
		}
	}
}

// Analyzer is what the Collector reads: analyzer.Analyzer.
type Analyzer interface {
	Analyze(ctx context.Context) *diagnose.Report
}

// Collector computes the node, image, endpoint, diagnosis and agent
// metrics from a state store at scrape time.
type Collector struct {
	store    *state.Store
	analyzer Analyzer
	cfg      Config
	started  time.Time
}

// NewCollector returns a Collector reading store through analyzer.
func NewCollector(store *state.Store, analyzer Analyzer, cfg Config) *Collector {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Collector{store: store, analyzer: analyzer, cfg: cfg, started: cfg.Now()}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		imageStatusDesc, imageInUseDesc, nodeStaleDesc, lastReportDesc,
		endpointUpDesc, endpointLatencyDesc, endpointLatencyQuantileDesc, agentsConnectedDesc, agentStreamsDesc, nodesDesc,
		imageNodesDesc, imageFailureDesc, registryFailureDesc, imageStatusSinceDesc,
		containerAtRiskDesc, workloadRiskNodesDesc, containersSafeDesc,
		registryUnreachableNodesDesc, nodeUnreachableRegistriesDesc, nodeFailingImagesDesc,
		imageFailureInUseDesc, nodeNotReportingDesc, apiNodesDesc,
	} {
		ch <- d
	}
	current, legacy := c.cfg.compat()
	if current {
		for _, d := range compatDescs {
			ch <- d
		}
	}
	if legacy {
		for _, kind := range legacyKinds {
			for _, d := range legacyDescs[kind] {
				ch <- d
			}
		}
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	r := c.analyzer.Analyze(context.Background())
	onlyFailing := c.cfg.NodeImageSeries == NodeImageSeriesFailing
	sel := endpointSelection{onlyFailing: c.cfg.NodeEndpointSeries == NodeEndpointSeriesFailing, down: map[string]bool{}}
	states := map[diagnose.NodeState]int{}
	for i := range r.Nodes {
		n := &r.Nodes[i]
		states[n.State()]++
		collectNode(ch, n, onlyFailing)
		sel.collect(ch, n.Name, r.NodeEndpoints[i])
	}
	collectLatencies(ch, r)
	for _, st := range diagnose.NodeStates() {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(states[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(agentsConnectedDesc, prometheus.GaugeValue, float64(c.store.ConnectedAgents()))
	ch <- prometheus.MustNewConstMetric(agentStreamsDesc, prometheus.GaugeValue, float64(c.store.OpenStreams()))

	for i := range r.Images {
		f := &r.Images[i]
		for _, st := range statuses {
			if n := f.Counts[st]; n > 0 {
				ch <- prometheus.MustNewConstMetric(imageNodesDesc, prometheus.GaugeValue, float64(n), f.Image, st.Word())
			}
		}
		if f.Scope != diagnose.ScopeNone {
			ch <- prometheus.MustNewConstMetric(imageFailureDesc, prometheus.GaugeValue, float64(len(f.Failing)), f.Image, f.Registry, string(f.Scope))
		}
	}
	for i := range r.Endpoints {
		f := &r.Endpoints[i]
		if f.Scope != diagnose.ScopeNone {
			ch <- prometheus.MustNewConstMetric(registryFailureDesc, prometheus.GaugeValue, float64(len(f.Failing)), f.Registry, f.URL, string(f.Scope))
		}
	}
	collectScopes(ch, r)
	if c.cfg.APINodes != nil {
		if nodes, synced := c.cfg.APINodes(); synced {
			collectAPINodes(ch, r, nodes, c.started, c.cfg.Now(), c.cfg.NeverReportedAfter)
		}
	}
	if current, legacy := c.cfg.compat(); (current || legacy) && (c.cfg.Owners == nil || c.cfg.Owners.OwnersSynced()) {
		collectCompat(ch, r, c.cfg.Owners, current, legacy)
	}
	if c.cfg.Risk != nil {
		collectRisk(ch, c.cfg.Risk())
	}
}

// scopeCounts counts something per diagnosis scope.
type scopeCounts map[diagnose.Scope]int

// collectScopes emits the families that tell scopes apart per node and
// per zone, so that alerts select one scope's series (a handful during
// an incident) instead of reading every node's image series.
func collectScopes(ch chan<- prometheus.Metric, r *diagnose.Report) {
	type regZone struct {
		registry, zone string
		scope          diagnose.Scope
	}
	byZone := map[regZone]int{}
	lostRegs := map[int]scopeCounts{} // node index → registries lost, by scope
	for _, f := range r.Registries {
		if f.Scope == diagnose.ScopeNone {
			continue
		}
		for _, i := range f.Failing {
			byZone[regZone{f.Registry, r.Nodes[i].Zone, f.Scope}]++
			if lostRegs[i] == nil {
				lostRegs[i] = scopeCounts{}
			}
			lostRegs[i][f.Scope]++
		}
	}
	for k, n := range byZone {
		ch <- prometheus.MustNewConstMetric(registryUnreachableNodesDesc, prometheus.GaugeValue, float64(n), k.registry, k.zone, string(k.scope))
	}
	imageScope := make(map[string]diagnose.Scope, len(r.Images))
	for i := range r.Images {
		if f := &r.Images[i]; f.Scope != diagnose.ScopeNone {
			imageScope[f.Image] = f.Scope
		}
	}
	failing := scopeCounts{}
	inUse := map[string]int{} // failing image → live nodes where it is in use
	for i := range r.Nodes {
		n := &r.Nodes[i]
		if n.State() == diagnose.NodeStale {
			ch <- prometheus.MustNewConstMetric(nodeNotReportingDesc, prometheus.GaugeValue, 1, n.Name, "stale")
		}
		if !n.Live() {
			continue
		}
		emitScopes(ch, nodeUnreachableRegistriesDesc, n, lostRegs[i])
		clear(failing)
		for _, im := range n.Images {
			if im.GetInUse() && im.GetStatus() != pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE {
				if sc, ok := imageScope[im.GetImage()]; ok {
					failing[sc]++
					inUse[im.GetImage()]++
				}
			}
		}
		emitScopes(ch, nodeFailingImagesDesc, n, failing)
	}
	for i := range r.Images {
		f := &r.Images[i]
		if n := inUse[f.Image]; n > 0 {
			ch <- prometheus.MustNewConstMetric(imageFailureInUseDesc, prometheus.GaugeValue, float64(n), f.Image, f.Registry, string(f.Scope))
		}
	}
}

func emitScopes(ch chan<- prometheus.Metric, desc *prometheus.Desc, n *diagnose.Node, counts scopeCounts) {
	for _, sc := range diagnose.Scopes() {
		if v := counts[sc]; v > 0 {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(v), n.Name, n.Zone, string(sc))
		}
	}
}

// compat says which compatibility schemas are on.
func (cfg Config) compat() (current, legacy bool) {
	switch cfg.CompatSchema {
	case CompatCurrent:
		return true, false
	case CompatLegacy:
		return false, true
	case CompatBoth:
		return true, true
	}
	return false, false
}

// statuses is the status vocabulary, listed once.
var statuses = pullwatchv1.Statuses()

func collectNode(ch chan<- prometheus.Metric, n *diagnose.Node, onlyFailing bool) {
	ch <- prometheus.MustNewConstMetric(nodeStaleDesc, prometheus.GaugeValue, boolValue(n.Stale), n.Name)
	ch <- prometheus.MustNewConstMetric(lastReportDesc, prometheus.GaugeValue, float64(n.LastReport.UnixNano())/1e9, n.Name)
	for _, im := range n.Images {
		if onlyFailing && im.GetStatus() == pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE {
			continue
		}
		// Validation guarantees a valid status, so the word is never empty.
		ch <- prometheus.MustNewConstMetric(imageStatusDesc, prometheus.GaugeValue, 1, n.Name, im.GetImage(), im.GetStatus().Word())
		ch <- prometheus.MustNewConstMetric(imageInUseDesc, prometheus.GaugeValue, boolValue(im.GetInUse()), n.Name, im.GetImage())
	}
	for _, im := range n.Images {
		if im.GetStatus() != pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE && im.GetStatusSince() != nil {
			ch <- prometheus.MustNewConstMetric(imageStatusSinceDesc, prometheus.GaugeValue, float64(im.GetStatusSince().AsTime().UnixNano())/1e9,
				n.Name, im.GetImage(), im.GetStatus().Word())
		}
	}
}

// endpointSelection emits a node's endpoint series, all of them or only
// those of registries with an endpoint down (down is scratch space, one
// map reused for every node).
type endpointSelection struct {
	onlyFailing bool
	down        map[string]bool
}

func (sel endpointSelection) collect(ch chan<- prometheus.Metric, node string, endpoints []diagnose.NodeEndpoint) {
	if sel.onlyFailing {
		clear(sel.down)
		for _, ep := range endpoints {
			if !ep.Up {
				sel.down[ep.Registry] = true
			}
		}
		if len(sel.down) == 0 {
			return
		}
	}
	for _, ep := range endpoints {
		if sel.onlyFailing && !sel.down[ep.Registry] {
			continue
		}
		ch <- prometheus.MustNewConstMetric(endpointUpDesc, prometheus.GaugeValue, boolValue(ep.Up), node, ep.Registry, ep.URL, ep.Role)
		if ep.HasLatency {
			ch <- prometheus.MustNewConstMetric(endpointLatencyDesc, prometheus.GaugeValue, ep.MaxLatency, node, ep.Registry, ep.URL, ep.Role)
		}
	}
}

// latencyQuantiles are the quantiles of pullwatch_endpoint_latency_seconds;
// 1 is the slowest node.
var latencyQuantiles = []float64{0.5, 0.9, 0.99, 1}

// collectLatencies emits pullwatch_endpoint_latency_seconds: per endpoint,
// quantiles of the live nodes' latencies to it (nearest rank), so that a
// dashboard keeps a latency per endpoint when per-node series are only
// for failing registries.
func collectLatencies(ch chan<- prometheus.Metric, r *diagnose.Report) {
	lat := map[diagnose.EndpointKey][]float64{}
	for i := range r.Nodes {
		if !r.Nodes[i].Live() {
			continue
		}
		for _, ep := range r.NodeEndpoints[i] {
			if ep.HasLatency {
				lat[ep.EndpointKey] = append(lat[ep.EndpointKey], ep.MaxLatency)
			}
		}
	}
	for k, v := range lat {
		slices.Sort(v)
		qs := make(map[float64]float64, len(latencyQuantiles))
		for _, q := range latencyQuantiles {
			qs[q] = v[max(0, int(math.Ceil(q*float64(len(v))))-1)]
		}
		sum := 0.0
		for _, x := range v {
			sum += x
		}
		ch <- prometheus.MustNewConstSummary(endpointLatencyQuantileDesc, uint64(len(v)), sum, qs, k.Registry, k.URL, k.Role)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
