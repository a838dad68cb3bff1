package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullwatch/pullwatch/aggregator/pkg/risk"
)

var (
	imageStatusSinceDesc = prometheus.NewDesc(
		"pullwatch_node_image_status_since_timestamp_seconds",
		"Unix time the node first saw the image's current status (kept across agent and aggregator restarts). "+
			"Only for images not available on the node, from agents that report it.",
		[]string{"node", "image", "status"}, nil)
	containerAtRiskDesc = prometheus.NewDesc(
		"pullwatch_container_at_risk",
		"1 for a container that would fail to (re)start on its node now: the image is not available from the node and the kubelet "+
			"would pull it, because it is not in the node's cache (reason not_cached) or the pull policy is Always (reason pull_always). "+
			"Series only for containers at risk; a cached image with IfNotPresent is safe through a registry outage and has none. Needs the Kubernetes API.",
		[]string{"node", "namespace", "pod", "container", "image", "reason"}, nil)
	workloadRiskNodesDesc = prometheus.NewDesc(
		"pullwatch_workload_risk_nodes",
		"Number of live nodes where a new replica of the workload's container would fail to pull now (the image is not cached there, or "+
			"always pulled, and the registry or the node's path to it fails). One series per workload container; kind is "+
			"deployment, statefulset, daemonset, cronjob, job, pod (bare pods), or another controller's kind. Needs the Kubernetes API.",
		[]string{"namespace", "kind", "name", "container", "image"}, nil)
	containersSafeDesc = prometheus.NewDesc(
		"pullwatch_containers_safe_cached",
		"Number of containers whose image is not available from their node but which would restart from the node's cache "+
			"(cached, pull policy IfNotPresent or Never): what a registry outage does not touch. Needs the Kubernetes API.",
		nil, nil)
)

// collectRisk emits the risk families; a nil assessment (no Kubernetes
// API, pods not loaded yet) emits none.
func collectRisk(ch chan<- prometheus.Metric, a *risk.Assessment) {
	if a == nil {
		return
	}
	for _, c := range a.AtRisk {
		ch <- prometheus.MustNewConstMetric(containerAtRiskDesc, prometheus.GaugeValue, 1,
			c.Node, c.Namespace, c.Pod, c.Container, c.Image, string(c.Reason))
	}
	for _, w := range a.Workloads {
		ch <- prometheus.MustNewConstMetric(workloadRiskNodesDesc, prometheus.GaugeValue, float64(len(w.Nodes)),
			w.Namespace, w.Kind, w.Name, w.Container, w.Image)
	}
	ch <- prometheus.MustNewConstMetric(containersSafeDesc, prometheus.GaugeValue, float64(len(a.Safe)))
}
