// Package options is the aggregator's configuration: its command-line
// flags, each with an environment variable equivalent (see pkg/envflag).
package options

import (
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/pullwatch/pullwatch/aggregator/pkg/metrics"
	"github.com/pullwatch/pullwatch/aggregator/pkg/shard"
	"github.com/pullwatch/pullwatch/pkg/envflag"
)

// Options is the parsed configuration.
type Options struct {
	GRPCListen      string
	HTTPListen      string
	StaleAfter      time.Duration
	MaxReportBytes  int
	ShutdownTimeout time.Duration
	LogLevel        slog.Level
	LogFormat       string // "text" or "json"
	Kubeconfig      string
	// NodeImageSeries is metrics.NodeImageSeriesAll or
	// metrics.NodeImageSeriesFailing.
	NodeImageSeries string
	CompatMetrics   bool
	// ProbeReplicas is k of probe sharding; 0 turns sharding off.
	ProbeReplicas int
	// RegistryBudgets are cluster-wide manifest HEADs per interval per
	// registry host.
	RegistryBudgets shard.Budgets
	// AgentInterval is the agents' interval, which round phases spread over.
	AgentInterval time.Duration
}

// Name is the program name used in usage and error messages.
const Name = "pullwatch-aggregator"

// The bounds of --max-report-bytes. Below 1 KiB not even a small snapshot
// fits; above 1 GiB one agent could exhaust the aggregator's memory.
const (
	minReportBytes = 1 << 10
	maxReportBytes = 1 << 30
)

const summary = `pullwatch-aggregator receives reports from pullwatch-agent (one per node, over
gRPC) about which container images the node can still pull, and exposes them
as Prometheus metrics: which images can no longer be pulled, on which nodes,
and why.`

// Parse parses the command-line arguments (without the program name) and,
// for flags not given there, the environment through getenv. On --help it
// writes the usage text to out and returns flag.ErrHelp. Any other error
// names the flag or variable and what it accepts.
func Parse(args []string, getenv func(string) string, out io.Writer) (*Options, error) {
	o := &Options{
		GRPCListen:      ":9400",
		HTTPListen:      ":8080",
		StaleAfter:      3 * time.Minute,
		MaxReportBytes:  16 << 20,
		ShutdownTimeout: 10 * time.Second,
		LogLevel:        slog.LevelInfo,
		LogFormat:       "text",
		NodeImageSeries: metrics.NodeImageSeriesFailing,
		CompatMetrics:   true,
		ProbeReplicas:   shard.DefaultReplicas,
		RegistryBudgets: shard.Budgets(shard.DefaultBudgets()),
		AgentInterval:   time.Minute,
	}
	s := envflag.New(Name, Name+" [flags]", summary)
	s.Var((*envflag.ListenAddr)(&o.GRPCListen), "grpc-listen", "`host:port` to serve the agents' gRPC ReportService on.")
	s.Var((*envflag.ListenAddr)(&o.HTTPListen), "http-listen", "`host:port` to serve /metrics, /healthz and /readyz on.")
	s.Var((*envflag.PositiveDuration)(&o.StaleAfter), "stale-after",
		"A node whose agent has not reported for longer than this `duration` is stale (pullwatch_node_stale 1). Its last results stay exported.")
	s.Var(&envflag.IntRange{Value: &o.MaxReportBytes, Min: minReportBytes, Max: maxReportBytes}, "max-report-bytes",
		fmt.Sprintf("Largest agent message accepted, in `bytes` (%d to %d). gRPC refuses a larger one with RESOURCE_EXHAUSTED and ends that agent's stream.", minReportBytes, maxReportBytes))
	s.Var((*envflag.PositiveDuration)(&o.ShutdownTimeout), "shutdown-timeout",
		"On SIGINT or SIGTERM, the longest `duration` to wait for agent streams and HTTP requests to finish before closing them.")
	s.Var((*envflag.LogLevel)(&o.LogLevel), "log-level", "Least severe `level` to log: debug, info, warn or error.")
	s.Var(&envflag.Choice{Value: &o.LogFormat, Choices: []string{"text", "json"}}, "log-format", "Log `format` on stderr: text or json.")
	s.StringVar(&o.Kubeconfig, "kubeconfig", "",
		"`path` (or list of paths, as in $KUBECONFIG) to a kubeconfig, used outside a cluster. Without one and outside a cluster, node-deletion tracking, Node zones and workload owners are off.")
	s.Env("kubeconfig", "KUBECONFIG")
	s.Var(&envflag.Choice{Value: &o.NodeImageSeries, Choices: []string{metrics.NodeImageSeriesAll, metrics.NodeImageSeriesFailing}}, "node-image-series",
		"Which images get per-node series (pullwatch_node_image_status, pullwatch_node_image_in_use): `failing` (only images not available on the node; the default, "+
			"which holds at 5,000 nodes × 100 images), or all (about 100,000 more series per 1,000 nodes with 50 images; see docs/benchmarks.md for its cost at each size). Cluster-wide series are complete either way. See docs/metrics.md.")
	s.BoolVar(&o.CompatMetrics, "compat-metrics", o.CompatMetrics,
		"Also export the k8s_image_availability_exporter_* families of k8s-image-availability-exporter (labels namespace, container, image, kind, name), "+
			"so its dashboards and alerts keep working. With the Kubernetes API, kind and name are the workload (Pod → ReplicaSet → Deployment, Job → CronJob); without it, the pod.")

	s.Var(&envflag.IntRange{Value: &o.ProbeReplicas, Min: 0, Max: 100}, "probe-replicas",
		"Probe sharding: how many `nodes` HEAD each distinct image (reference, credential source, endpoints) per interval, in different zones where there are any; "+
			"the other nodes that have it only ping its registry and get their result. 0: every node HEADs every image it has. See docs/architecture.md#probe-sharding.")
	s.Var(o.RegistryBudgets, "registry-budget",
		"Cluster-wide manifest HEADs per interval per registry host, `host=N/interval,...` (docker.io=600/interval unless named; N=0 removes a budget). "+
			"Over budget, each node's share is scaled down by powers of 1/2 and it reports its last result for the images it skips.")
	s.Var((*envflag.PositiveDuration)(&o.AgentInterval), "agent-interval",
		"The agents' --interval `duration`: probe sharding spreads the nodes' round starts over it.")
	if err := s.Parse(args, getenv, out); err != nil {
		return nil, err
	}
	return o, nil
}
