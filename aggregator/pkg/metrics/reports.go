package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pullwatch/pullwatch/aggregator/pkg/ingest"
)

// Reports counts agent messages. It implements ingest.Observer and is a
// prometheus.Collector. Counters, unlike the state metrics, only ever grow,
// so plain counter vectors are right here.
type Reports struct {
	received  *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	refused   *prometheus.CounterVec
	closed    *prometheus.CounterVec
	forgotten prometheus.Counter
}

// NewReports returns counters with a zero series for each kind and reason,
// so that rate() and absent() work before the first report.
func NewReports(kinds, reasons []string) *Reports {
	r := &Reports{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullwatch_reports_received_total",
			Help: "Valid agent messages received, by kind (snapshot or update). Includes updates answered with resync because the stream had no snapshot yet.",
		}, []string{"kind"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullwatch_reports_rejected_total",
			Help: "Agent messages refused, by reason; each refusal ends that agent's stream. Reasons: " + strings.Join(reasons, ", ") + ".",
		}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullwatch_image_reports_refused_total",
			Help: "Image reports refused inside agent messages that were otherwise kept, by reason: the image is shown unknown (or left out when its reference is unusable), the rest of the node's report applies. Reasons: " + strings.Join(reasons, ", ") + ".",
		}, []string{"reason"}),
	}
	r.closed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pullwatch_agent_streams_closed_total",
		Help: "Agent streams the aggregator closed for its bounds, by reason: replaced (a newer stream for the same node took over) or first_report_timeout (no snapshot within --first-report-timeout).",
	}, []string{"reason"})
	for _, reason := range ingest.ClosedReasons() {
		r.closed.WithLabelValues(reason)
	}
	r.forgotten = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pullwatch_nodes_forgotten_total",
		Help: "Nodes dropped from the aggregator's state because they did not report for --forget-after.",
	})
	for _, k := range kinds {
		r.received.WithLabelValues(k)
	}
	for _, reason := range reasons {
		r.rejected.WithLabelValues(reason)
		r.refused.WithLabelValues(reason)
	}
	return r
}

// ReportReceived counts a valid message of the given kind.
func (r *Reports) ReportReceived(kind string) { r.received.WithLabelValues(kind).Inc() }

// ReportRejected counts a refused message.
func (r *Reports) ReportRejected(reason string) { r.rejected.WithLabelValues(reason).Inc() }

// StreamClosed counts a stream the aggregator closed for its bounds
// (ingest.StreamObserver).
func (r *Reports) StreamClosed(reason string) { r.closed.WithLabelValues(reason).Inc() }

// NodesForgotten counts nodes dropped for silence.
func (r *Reports) NodesForgotten(names []string) { r.forgotten.Add(float64(len(names))) }
// ImageRefused counts one image report refused in a kept message.
func (r *Reports) ImageRefused(reason string) { r.refused.WithLabelValues(reason).Inc() }

// Describe implements prometheus.Collector.
func (r *Reports) Describe(ch chan<- *prometheus.Desc) {
	r.received.Describe(ch)
	r.rejected.Describe(ch)
	r.closed.Describe(ch)
	r.forgotten.Describe(ch)
	r.refused.Describe(ch)
}

// Collect implements prometheus.Collector.
func (r *Reports) Collect(ch chan<- prometheus.Metric) {
	r.received.Collect(ch)
	r.rejected.Collect(ch)
	r.closed.Collect(ch)
	r.forgotten.Collect(ch)
	r.refused.Collect(ch)
}

// NewRegistry returns a registry with the Go runtime and process
// collectors and cs.
func NewRegistry(cs ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	reg.MustRegister(cs...)
	return reg
}
