package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullwatch/pullwatch/pkg/buildinfo"
)

// NewBuildInfo is pullwatch_build_info: 1, labelled with the running
// build's version, revision and Go version.
func NewBuildInfo(info buildinfo.Info) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pullwatch_build_info",
		Help: "Always 1; the labels say which build of pullwatch-aggregator runs: version, revision (commit) and goversion.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(info.Version, info.Revision, info.GoVersion).Set(1)
	return g
}
