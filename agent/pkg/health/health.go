// Package health is the agent's own HTTP endpoint: /healthz (rounds keep
// happening), /readyz (a first round has been published and the agent is
// not shutting down) and /metrics (the agent's own metrics, documented in
// docs/metrics.md). The node's image results are not exported here: the
// aggregator owns those series.
//
// Readiness does not depend on the stream to the aggregator: an aggregator
// outage would otherwise make every agent NotReady at once and stall a
// DaemonSet rollout, and an agent that cannot reach the aggregator still
// checks its node (its `check` and its log say what it sees). The stream's
// health is pullwatch_agent_stream_connected and
// pullwatch_agent_aggregator_connected here, and on the aggregator's side
// the PullwatchAgentMissing and PullwatchAggregatorReplicaMissingAgents
// alerts (docs/alerts.md).
package health

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pullwatch/pullwatch/agent/pkg/report"
	"github.com/pullwatch/pullwatch/pkg/buildinfo"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Monitor records the agent's rounds.
type Monitor struct {
	interval  time.Duration
	now       func() time.Time
	connected func() bool

	mu        sync.Mutex
	started   time.Time
	lastRound time.Time // last successful round
	published bool
	stopping  bool

	rounds   *prometheus.CounterVec
	duration prometheus.Histogram
	lastOK   prometheus.Gauge
	images   *prometheus.GaugeVec
	streamUp prometheus.GaugeFunc
	registry *prometheus.Registry
}

// New returns a Monitor for rounds every interval; connected reports
// whether the stream to the aggregator is up (for the metrics only).
func New(interval time.Duration, connected func() bool) *Monitor {
	m := &Monitor{interval: interval, now: time.Now, connected: connected}
	m.started = m.now()
	m.rounds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pullwatch_agent_rounds_total",
		Help: "Rounds (inventory, probes, report) the agent ran, by result: ok or error.",
	}, []string{"result"})
	m.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "pullwatch_agent_round_duration_seconds",
		Help:    "How long one round took: CRI inventory plus every probe.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
	})
	m.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pullwatch_agent_last_round_timestamp_seconds",
		Help: "Unix time the last successful round ended.",
	})
	m.images = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pullwatch_agent_images",
		Help: "Images in the last successful round, by status.",
	}, []string{"status"})
	m.streamUp = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pullwatch_agent_stream_connected",
		Help: "1 while a report stream to the aggregator (with replicas: to at least one) is up and acknowledged, else 0.",
	}, func() float64 {
		if m.connected != nil && m.connected() {
			return 1
		}
		return 0
	})
	for _, r := range []string{"ok", "error"} {
		m.rounds.WithLabelValues(r)
	}
	m.registry = prometheus.NewRegistry()
	m.registry.MustRegister(m.rounds, m.duration, m.lastOK, m.images, m.streamUp,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// aggregatorConnectedDesc is the per-replica stream state.
var aggregatorConnectedDesc = prometheus.NewDesc("pullwatch_agent_aggregator_connected", aggregatorConnectedHelp(), []string{"aggregator"}, nil)

func aggregatorConnectedHelp() string {
	return "1 while the report stream to this aggregator address (a replica's pod address, or the --aggregator HOST:PORT) is up and acknowledged, else 0. " +
		"One series per address the agent streams to."
}

// endpointsCollector exports pullwatch_agent_aggregator_connected.
type endpointsCollector func() map[string]bool

func (endpointsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- aggregatorConnectedDesc }

func (f endpointsCollector) Collect(ch chan<- prometheus.Metric) {
	for addr, up := range f() {
		v := 0.0
		if up {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(aggregatorConnectedDesc, prometheus.GaugeValue, v, addr)
	}
}

// ReportEndpoints exports each aggregator address's stream state from
// endpoints (stream.Replicas.Endpoints); call it once, before serving.
func (m *Monitor) ReportEndpoints(endpoints func() map[string]bool) {
	m.registry.MustRegister(endpointsCollector(endpoints))
}

// ReportBuild exports pullwatch_build_info for info; call it once, before
// serving.
func (m *Monitor) ReportBuild(info buildinfo.Info) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pullwatch_build_info",
		Help: "Always 1; the labels say which build of pullwatch-agent runs: version, revision (commit) and goversion.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(info.Version, info.Revision, info.GoVersion).Set(1)
	m.registry.MustRegister(g)
}

// Round records one round: its duration and, when it succeeded, the
// node's report.
func (m *Monitor) Round(took time.Duration, node *report.Node, err error) {
	m.duration.Observe(took.Seconds())
	if err != nil {
		m.rounds.WithLabelValues("error").Inc()
		return
	}
	m.rounds.WithLabelValues("ok").Inc()
	now := m.now()
	m.lastOK.Set(float64(now.UnixNano()) / 1e9)
	counts := map[pb.ImageStatus]float64{}
	for _, im := range node.Images {
		counts[im.Status]++
	}
	m.images.Reset()
	for st, n := range counts {
		m.images.WithLabelValues(st.Word()).Set(n)
	}
	m.mu.Lock()
	m.lastRound, m.published = now, true
	m.mu.Unlock()
}

// healthy: a successful round within three intervals (plus a minute of
// slack for slow registries), or still starting.
func (m *Monitor) healthy() (bool, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	limit := 3*m.interval + time.Minute
	ref, what := m.lastRound, "last successful round"
	if ref.IsZero() {
		ref, what = m.started, "start"
	}
	if age := m.now().Sub(ref); age > limit {
		return false, "no successful round for " + age.Round(time.Second).String() + " since " + what
	}
	return true, "ok"
}

// Stopping makes /readyz fail from now on: the agent is shutting down.
func (m *Monitor) Stopping() {
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
}

func (m *Monitor) ready() (bool, string) {
	m.mu.Lock()
	published, stopping := m.published, m.stopping
	m.mu.Unlock()
	switch {
	case stopping:
		return false, "shutting down"
	case !published:
		return false, "no round finished yet"
	}
	return true, "ok"
}

// Handler serves /healthz, /readyz and /metrics.
func (m *Monitor) Handler() http.Handler {
	mux := http.NewServeMux()
	probe := func(check func() (bool, string)) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			ok, why := check()
			if !ok {
				http.Error(w, why, http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		}
	}
	mux.Handle("/healthz", probe(m.healthy))
	mux.Handle("/readyz", probe(m.ready))
	mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	return mux
}
