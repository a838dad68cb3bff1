// Package options is the aggregator's configuration: its command-line
// flags, each with an environment variable equivalent (see pkg/envflag).
package options

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/pullwatch/pullwatch/aggregator/pkg/imagefilter"
	"github.com/pullwatch/pullwatch/aggregator/pkg/lend"
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
	// NodeEndpointSeries is metrics.NodeEndpointSeriesAll or
	// metrics.NodeEndpointSeriesFailing.
	NodeEndpointSeries string
	// CompatMetrics is one of metrics.CompatSchemas: current, legacy,
	// both or off; "" (not said) is current with the Kubernetes API and
	// off without it (ResolveCompat).
	CompatMetrics string
	// Image filters (imagefilter.New): regular expressions, and a
	// namespace label selector.
	IgnoredImages, AllowedImages []string
	NamespaceLabel               string
	// NodeCondition turns on the RegistryReachable Node condition and
	// its Events.
	NodeCondition bool
	// LendCredentials is lend.ModeVerified, lend.ModeOff or
	// lend.ModeUnverifiedLab (--lend-credentials).
	LendCredentials string
	// ForgetAfter drops a node silent this long; 10 × StaleAfter unless set.
	ForgetAfter time.Duration
	// MaxNodeImages and MaxNodeEndpoints cap what one node may hold.
	MaxNodeImages    int
	MaxNodeEndpoints int
	// MaxNodeBytes caps the bytes of one node's reports the aggregator keeps.
	MaxNodeBytes int
	// MaxConcurrentStreams bounds streams per agent connection.
	MaxConcurrentStreams int
	// FirstReportTimeout closes a stream that sends no snapshot in time.
	FirstReportTimeout time.Duration
	// ProbeReplicas is k of probe sharding; 0 turns sharding off.
	ProbeReplicas int
	// RegistryBudgets are cluster-wide manifest HEADs per interval per
	// registry host.
	RegistryBudgets shard.Budgets
	// AgentInterval is the agents' interval, which round phases spread over.
	AgentInterval time.Duration

	// Auth is how agents are authenticated: AuthKubernetes, AuthNone,
	// or "" (not said: Kubernetes when the API is configured; without
	// it the aggregator refuses to start, so that none is always said).
	Auth string
	// AgentServiceAccount is the agents' "namespace/name".
	AgentServiceAccount string
	// AuthQPS and AuthBurst are the rate limits of authentication's own
	// Kubernetes client (TokenReviews, SubjectAccessReviews), apart from
	// the client every other API call shares.
	AuthQPS   float64
	AuthBurst int
	// HTTPAuth guards /metrics and the status page, as Auth ("" likewise).
	HTTPAuth string
	// HTTPTokenAudiences are the audiences an HTTP caller's token must
	// have one of (empty: the API server's own, as kube-rbac-proxy's
	// audience option).
	HTTPTokenAudiences []string
	// ScrapeTokenSecret ("namespace/name") is the Secret the aggregator
	// keeps a token of ScrapeTokenServiceAccount in, for the first of
	// HTTPTokenAudiences (a ServiceMonitor's authorization names it).
	ScrapeTokenSecret         string
	ScrapeTokenServiceAccount string
	// TLSDir holds tls.crt and tls.key for the gRPC listener; Insecure
	// serves plaintext instead. One of them must be given.
	TLSDir   string
	Insecure bool
	// HTTPTLS serves --http-listen over TLS too, from TLSDir's files.
	HTTPTLS bool
	// Pprof serves Go's runtime profiles under /debug/pprof/.
	Pprof bool
}

// compatValue is --compat-metrics: a schema word, or a boolean as the
// flag was before it had schemas (true: current, false: off).
type compatValue struct{ v *string }

func (c compatValue) String() string {
	if c.v == nil {
		return ""
	}
	return *c.v
}

func (c compatValue) Set(s string) error {
	switch s {
	case "true", "1":
		s = metrics.CompatCurrent
	case "false", "0":
		s = metrics.CompatOff
	}
	if !slices.Contains(metrics.CompatSchemas(), s) {
		return fmt.Errorf("want %s (or true for current, false for off)", strings.Join(metrics.CompatSchemas(), ", "))
	}
	*c.v = s
	return nil
}

// IsBoolFlag lets a bare --compat-metrics mean true, as before.
func (compatValue) IsBoolFlag() bool { return true }

// regexList is a "~"-separated list of regular expressions, checked when
// the filter is built.
type regexList struct{ v *[]string }

func (r regexList) String() string {
	if r.v == nil {
		return ""
	}
	return strings.Join(*r.v, "~")
}

func (r regexList) Set(s string) error {
	*r.v = imagefilter.Split(s)
	_, err := imagefilter.New(*r.v, nil, "")
	return err
}

// forgetFactor is --forget-after's default in units of --stale-after.
const forgetFactor = 10

// The values of --auth and --http-auth.
const (
	AuthKubernetes = "kubernetes"
	AuthNone       = "none"
)

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
		// Per-node endpoint series for every endpoint are 2 × nodes ×
		// endpoints: 200,000 at 5,000 nodes using 20 registries, a /metrics
		// answer past 2 s (docs/benchmarks.md).
		NodeEndpointSeries: metrics.NodeEndpointSeriesFailing,
		LendCredentials:    lend.ModeVerified,

		MaxNodeImages:        5000,
		MaxNodeEndpoints:     256,
		MaxNodeBytes:         4 << 20,
		MaxConcurrentStreams: 16,
		FirstReportTimeout:   time.Minute,
		ProbeReplicas:        shard.DefaultReplicas,
		RegistryBudgets:      shard.Budgets(shard.DefaultBudgets()),
		AgentInterval:        time.Minute,
		AuthQPS:              20,
		AuthBurst:            40,
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
	s.Var(&envflag.Choice{Value: &o.NodeEndpointSeries, Choices: []string{metrics.NodeEndpointSeriesAll, metrics.NodeEndpointSeriesFailing}}, "node-endpoint-series",
		"Which registry endpoints get per-node series (pullwatch_node_endpoint_up, pullwatch_node_endpoint_latency_seconds): `failing` (the default: every endpoint of a registry "+
			"with an endpoint that does not answer the node, so max by (node, registry) still works), or all (2 series per node and endpoint: 200,000 at 5,000 nodes × 20 registries). "+
			"pullwatch_endpoint_latency_seconds gives each endpoint's latency across nodes either way. See docs/metrics.md.")
	s.Var(compatValue{&o.CompatMetrics}, "compat-metrics",
		"Also export k8s-image-availability-exporter's families, so its dashboards and alerts keep working: `schema` current "+
			"(k8s_image_availability_exporter_<mode>, labels namespace, container, image, kind, name), legacy (before its v0.7: "+
			"k8s_image_availability_exporter_<kind>_<mode> with a label named after the kind, for deployment, statefulset, daemonset, cronjob), both, or off. "+
			"true means current, false off. With the Kubernetes API, kind and name are the workload (Pod → ReplicaSet → Deployment, Job → CronJob); without it, the pod. "+
			"Default: current with the Kubernetes API, off without it (every pod would be a workload of its own: about 2 M series at 5,000 nodes × 100 images); "+
			"say current to have them per pod anyway.")
	s.Var(regexList{&o.IgnoredImages}, "ignored-images",
		"Images not to watch: `regexps` separated by ~ (as k8s-image-availability-exporter's flag), matched against the normalized reference "+
			"(docker.io/library/nginx:1.27). Applied to every metric, hence the alerts, and the status page.")
	s.Var(regexList{&o.AllowedImages}, "allowed-images",
		"Only watch images matching one of these `regexps` (separated by ~), after --ignored-images. Empty: every image.")
	s.StringVar(&o.NamespaceLabel, "namespace-label", "",
		"Only watch namespaces matching this label `selector` (\"team\", \"team=payments\", \"env in (prod)\"): an image is watched where a container "+
			"of a selected namespace uses it. Needs the Kubernetes API and list/watch on namespaces.")
	s.BoolVar(&o.NodeCondition, "node-condition", false,
		"Set a RegistryReachable condition on each Node (False while some registry endpoint does not answer the node) and emit an Event on each change, "+
			"so kubectl describe node shows it. Needs the Kubernetes API, patch on nodes/status and create on events (deploy/components/node-condition).")

	s.Var(&envflag.Choice{Value: &o.LendCredentials, Choices: lend.Modes()}, "lend-credentials",
		"Lend agents the imagePullSecrets of their own node's pods (`mode`), so no node needs RBAC on Secrets: "+
			"verified (only to agents whose ServiceAccount token was verified and bound to their node, --auth=kubernetes), "+
			"off (agents probe without pull secrets), or unverified-lab (also to callers without a verified token, for the node they name: "+
			"anyone reaching the gRPC port reads any node's pull secrets; a lab only). Needs the Kubernetes API and RBAC get on secrets, list/watch on pods. See docs/security.md.")
	s.Var((*envflag.PositiveDuration)(&o.ForgetAfter), "forget-after",
		fmt.Sprintf("Drop a node (its results and series) after its agent has not reported for this `duration`; more than --stale-after. Default: %d × --stale-after.", forgetFactor))
	s.Var(&envflag.IntRange{Value: &o.MaxNodeImages, Min: 1, Max: 1_000_000}, "max-node-images",
		"Most images the aggregator keeps for one node (`count`); a report that would take a node over it is refused (pullwatch_reports_rejected_total{reason=\"node_image_limit\"}).")
	s.Var(&envflag.IntRange{Value: &o.MaxNodeEndpoints, Min: 1, Max: 100_000}, "max-node-endpoints",
		"Most distinct registry endpoint URLs one node's images may name (`count`); a report over it is refused (reason node_endpoint_limit).")
	s.Var(&envflag.IntRange{Value: &o.MaxNodeBytes, Min: 64 << 10, Max: 1 << 30}, "max-node-bytes",
		"Most `bytes` of image reports the aggregator keeps for one node (as encoded, plus what each container, endpoint and repo digest costs in memory beyond its encoding), 65536 to 1073741824; a report that would take a node over it is refused "+
			"(reason node_byte_limit) and the node's last good state kept. A real node with 5,000 images stays far below the default 4 MiB; one node cannot grow the aggregator past it.")
	s.Var(&envflag.IntRange{Value: &o.MaxConcurrentStreams, Min: 1, Max: 10_000}, "max-concurrent-streams",
		"Most gRPC streams on one agent connection (`count`); an agent needs one.")
	s.Var((*envflag.PositiveDuration)(&o.FirstReportTimeout), "first-report-timeout",
		"Close a new agent stream that has not sent its first snapshot within this `duration`. Agents open their stream once they have a snapshot to send.")

	s.Var(&envflag.IntRange{Value: &o.ProbeReplicas, Min: 0, Max: 100}, "probe-replicas",
		"Probe sharding: how many `nodes` HEAD each distinct image (reference, credential source, endpoints) per interval, in different zones where there are any; "+
			"the other nodes that have it only ping its registry and get their result. 0: every node HEADs every image it has. See docs/architecture.md#probe-sharding.")
	s.Var(o.RegistryBudgets, "registry-budget",
		"Cluster-wide manifest HEADs per interval per registry host, `host=N/interval,...` (docker.io=600/interval unless named; N=0 removes a budget). "+
			"Over budget, each node's share is scaled down by powers of 1/2 and it reports its last result for the images it skips.")
	s.Var((*envflag.PositiveDuration)(&o.AgentInterval), "agent-interval",
		"The agents' --interval `duration`: probe sharding spreads the nodes' round starts over it.")
	o.AgentServiceAccount = "pullwatch/pullwatch-agent"
	s.Var(&envflag.Choice{Value: &o.Auth, Choices: []string{AuthKubernetes, AuthNone}}, "auth",
		"How agents are authenticated: `kubernetes` (each stream carries the agent pod's projected ServiceAccount token, audience pullwatch, verified with a TokenReview; "+
			"only --agent-service-account, and only reports for the node its pod is bound to) or none (anyone who reaches --grpc-listen may report for any node: for a lab without the Kubernetes API). "+
			"Default: kubernetes when the Kubernetes API is configured; without it, none must be given explicitly.")
	s.StringVar(&o.AgentServiceAccount, "agent-service-account", o.AgentServiceAccount,
		"The agents' ServiceAccount, `namespace/name`: with --auth=kubernetes, tokens of any other account are refused (PermissionDenied).")
	s.Var(&envflag.FloatRange{Value: &o.AuthQPS, Min: 0.1, Max: 10_000}, "auth-qps",
		"Requests per second (`rate`) authentication's own Kubernetes client may send (TokenReviews of agents' tokens, the pods of their tokens, and the HTTP callers' "+
			"TokenReviews and SubjectAccessReviews): apart from every other API call, so a flood of junk tokens cannot starve them, nor they the rest.")
	s.Var(&envflag.IntRange{Value: &o.AuthBurst, Min: 1, Max: 100_000}, "auth-burst",
		"Burst (`count`) of authentication's own Kubernetes client above --auth-qps.")
	s.Var(&envflag.Choice{Value: &o.HTTPAuth, Choices: []string{AuthKubernetes, AuthNone}}, "http-auth",
		"Who may read /metrics and the status page: `kubernetes` (a bearer token authenticated with a TokenReview and authorized with a SubjectAccessReview of get on the URL path, "+
			"as kube-rbac-proxy does: no token 401, not allowed 403) or none (anyone). /healthz and /readyz are always open. "+
			"Default: kubernetes when the Kubernetes API is configured; without it, none must be given explicitly.")
	s.Var((*envflag.List)(&o.HTTPTokenAudiences), "http-token-audiences",
		"Comma-separated `audiences`: with --http-auth=kubernetes an HTTP caller's token must be valid for one of them (asked in the TokenReview, as kube-rbac-proxy's audience option), "+
			"so a token that reads /metrics is worthless against the Kubernetes API. Empty: any token the API server accepts for its own audiences (a Prometheus' ServiceAccount token). "+
			"deploy/ sets pullwatch-metrics.")
	s.StringVar(&o.ScrapeTokenSecret, "scrape-token-secret", "",
		"`namespace/name` of a Secret the aggregator keeps a token in (key token): a TokenRequest for --scrape-token-service-account, audience the first of --http-token-audiences, "+
			"bound to the Secret, valid 24h and renewed every 8h. A Prometheus operator's ServiceMonitor names it in authorization.credentials. Needs the Kubernetes API and RBAC "+
			"create serviceaccounts/token on that account and get, update on that Secret (deploy/aggregator.yaml). Empty: off.")
	s.StringVar(&o.ScrapeTokenServiceAccount, "scrape-token-service-account", "pullwatch-metrics-scraper",
		"The ServiceAccount, in --scrape-token-secret's namespace, whose token the Secret holds; bind it to the pullwatch-metrics-reader ClusterRole.")
	s.StringVar(&o.TLSDir, "tls-dir", "",
		"`directory` with tls.crt and tls.key (a kubernetes.io/tls Secret volume, as cert-manager writes it) for TLS on --grpc-listen; read again when the files change. "+
			"Required unless --insecure.")
	s.BoolVar(&o.Insecure, "insecure", false,
		"Serve --grpc-listen in plaintext, without TLS (a lab; agent tokens would then cross the network in the clear). Only when said.")
	s.BoolVar(&o.HTTPTLS, "http-tls", false,
		"Serve --http-listen (/metrics, the status page, /healthz, /readyz) over TLS too, with --tls-dir's files (read again when they change), "+
			"so that scrapers' bearer tokens never cross the network in the clear. Needs --tls-dir. deploy/ turns it on.")

	s.BoolVar(&o.Pprof, "pprof", false,
		"Serve Go's runtime profiles (CPU, heap, goroutines) under /debug/pprof/ on --http-listen, behind --http-auth like /metrics: "+
			"for measuring a large cluster (go tool pprof http://HOST:8080/debug/pprof/profile).")

	if err := s.Parse(args, getenv, out); err != nil {
		return nil, err
	}
	if o.ForgetAfter == 0 {
		o.ForgetAfter = forgetFactor * o.StaleAfter
	}
	if o.ForgetAfter <= o.StaleAfter {
		return nil, fmt.Errorf("--forget-after (env PULLWATCH_FORGET_AFTER) %s: must be longer than --stale-after %s", o.ForgetAfter, o.StaleAfter)
	}
	if _, err := imagefilter.New(o.IgnoredImages, o.AllowedImages, o.NamespaceLabel); err != nil {
		return nil, err
	}
	if ns, name, ok := strings.Cut(o.AgentServiceAccount, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("--agent-service-account %q: want namespace/name", o.AgentServiceAccount)
	}
	if o.ScrapeTokenSecret != "" {
		if ns, name, ok := strings.Cut(o.ScrapeTokenSecret, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("--scrape-token-secret (env PULLWATCH_SCRAPE_TOKEN_SECRET) %q: want namespace/name", o.ScrapeTokenSecret)
		}
		if len(o.HTTPTokenAudiences) == 0 {
			return nil, fmt.Errorf("--scrape-token-secret %s needs --http-token-audiences (env PULLWATCH_HTTP_TOKEN_AUDIENCES): "+
				"a token for the API server's own audience would be one the Kubernetes API accepts too", o.ScrapeTokenSecret)
		}
		if o.ScrapeTokenServiceAccount == "" || strings.Contains(o.ScrapeTokenServiceAccount, "/") {
			return nil, fmt.Errorf("--scrape-token-service-account %q: want a ServiceAccount name (in --scrape-token-secret's namespace)", o.ScrapeTokenServiceAccount)
		}
	}
	return o, nil
}

// CheckTransport says what is wrong with the listeners' transport
// security: neither --tls-dir nor --insecure, or both; --http-tls without
// --tls-dir. (Not part of
// Parse, so that options can be parsed and tested one at a time.)
func (o *Options) CheckTransport() error {
	switch {
	case o.TLSDir == "" && !o.Insecure:
		return errors.New("no TLS for --grpc-listen: set --tls-dir (env PULLWATCH_TLS_DIR) to a directory with tls.crt and tls.key, or --insecure (env PULLWATCH_INSECURE) for plaintext")
	case o.TLSDir != "" && o.Insecure:
		return fmt.Errorf("--tls-dir %s and --insecure both set: choose one", o.TLSDir)
	case o.HTTPTLS && o.TLSDir == "":
		return errors.New("--http-tls (env PULLWATCH_HTTP_TLS) needs --tls-dir (env PULLWATCH_TLS_DIR): it serves that directory's tls.crt and tls.key")
	}
	return nil
}

// ResolveCompat returns the --compat-metrics schema that applies: an
// explicit value as given; not said, current with the Kubernetes API and
// off without it, because without the API every pod is its own workload
// and the families grow with the pods rather than the workloads.
func ResolveCompat(schema string, haveAPI bool) string {
	switch {
	case schema != "":
		return schema
	case haveAPI:
		return metrics.CompatCurrent
	}
	return metrics.CompatOff
}

// ResolveAuth returns mode (--auth or --http-auth, named flag) as it
// applies: an explicit value as given, else kubernetes when the
// Kubernetes API is configured. Kubernetes without the API, or not said
// without the API, is an error: none is only ever what was asked for.
func ResolveAuth(flag, mode string, haveAPI bool) (string, error) {
	switch {
	case mode == AuthNone:
		return mode, nil
	case haveAPI:
		return AuthKubernetes, nil
	case mode == AuthKubernetes:
		return "", fmt.Errorf("--%s=kubernetes needs the Kubernetes API (run in a cluster or set --kubeconfig)", flag)
	default:
		return "", fmt.Errorf("no Kubernetes API to authenticate with: set --%s=none explicitly to let anyone in (a lab), or give the aggregator the API (in a cluster, or --kubeconfig)", flag)
	}
}
