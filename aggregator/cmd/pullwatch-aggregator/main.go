// Command pullwatch-aggregator receives pullwatch-agent reports over gRPC
// and exposes them as Prometheus metrics. Run it with --help for flags.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/pullwatch/pullwatch/pkg/buildinfo"
	"github.com/pullwatch/pullwatch/pkg/gomemlimit"
	"github.com/pullwatch/pullwatch/pkg/kubeapi"
	"github.com/pullwatch/pullwatch/pkg/logging"
	"github.com/pullwatch/pullwatch/pkg/tlsfiles"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/authn"
	"github.com/pullwatch/pullwatch/aggregator/pkg/imagefilter"
	"github.com/pullwatch/pullwatch/aggregator/pkg/ingest"
	"github.com/pullwatch/pullwatch/aggregator/pkg/kubewatch"
	"github.com/pullwatch/pullwatch/aggregator/pkg/lend"
	"github.com/pullwatch/pullwatch/aggregator/pkg/metrics"
	"github.com/pullwatch/pullwatch/aggregator/pkg/nodecondition"
	"github.com/pullwatch/pullwatch/aggregator/pkg/options"
	"github.com/pullwatch/pullwatch/aggregator/pkg/scrapetoken"
	"github.com/pullwatch/pullwatch/aggregator/pkg/shard"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
	"github.com/pullwatch/pullwatch/aggregator/pkg/web"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes: 1 for failures while running, 2 for bad configuration.
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	if versionCommand(os.Args[1:], os.Stdout) {
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == removeCommandName {
		os.Exit(removeNodeCondition(os.Args[2:], os.Stdout, os.Stderr))
	}
	opts, err := options.Parse(os.Args[1:], os.Getenv, os.Stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		usageError(err)
	}
	log := logging.New(os.Stderr, opts.LogLevel, opts.LogFormat)
	// client-go logs through klog; send it to the same handler.
	logging.RouteKlog(log)
	build := buildinfo.Read(version)
	log.Info("starting "+options.Name, "version", build.Version, "revision", build.Revision, "goversion", build.GoVersion)
	// At 5,000 nodes the live state is about half a gigabyte, and GOGC's
	// default alone would take the process to 1.8 GiB (docs/benchmarks.md).
	gomemlimit.FromCgroup(log)

	// Without the API, nodes are never dropped, zones come from the labels
	// agents send, and the compatibility metrics name pods.
	kube, err := kubeapi.Announce(log, opts.Kubeconfig, "node-deletion tracking, Node zones and workload owners are")
	if err != nil {
		usageError(fmt.Errorf("%w (fix --kubeconfig / KUBECONFIG, or unset it to run without the Kubernetes API)", err))
	}

	if err := opts.CheckTransport(); err != nil {
		usageError(err)
	}
	if opts.Auth, err = options.ResolveAuth("auth", opts.Auth, kube != nil); err != nil {
		usageError(err)
	}
	if opts.HTTPAuth, err = options.ResolveAuth("http-auth", opts.HTTPAuth, kube != nil); err != nil {
		usageError(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, opts, kube); err != nil {
		log.Error("aggregator failed", logging.ErrKey, err)
		stop()
		os.Exit(exitFailure)
	}
}

// versionCommand prints the version for `pullwatch-aggregator version`
// (or --version), as `pullwatch-agent version` does, and reports whether
// args asked for it.
func versionCommand(args []string, w io.Writer) bool {
	if len(args) != 1 || (args[0] != "version" && args[0] != "--version") {
		return false
	}
	fmt.Fprintln(w, options.Name, buildinfo.Read(version).Version)
	return true
}

func usageError(err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\nRun '%[1]s --help' for usage.\n", options.Name, err)
	os.Exit(exitUsage)
}

// analyzeEvery is how often the diagnosis runs on its own (scrapes and
// the status page run it too), so that its changes are logged promptly.
const analyzeEvery = 15 * time.Second

// run serves gRPC and HTTP until ctx is cancelled, then shuts down. kube
// is nil without the Kubernetes API.
func run(ctx context.Context, log *slog.Logger, opts *options.Options, kube *kubeapi.Config) error {
	srv, err := newServers(ctx, log, opts, kube)
	if err != nil {
		return err
	}
	// Listen before serving so that a taken port fails startup plainly.
	var lc net.ListenConfig
	grpcLis, err := lc.Listen(ctx, "tcp", opts.GRPCListen)
	if err != nil {
		return fmt.Errorf("--grpc-listen: %w", err)
	}
	httpLis, err := lc.Listen(ctx, "tcp", opts.HTTPListen)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("--http-listen: %w", err)
	}
	if srv.keypair != nil && opts.HTTPTLS {
		httpLis = tls.NewListener(httpLis, srv.keypair.ServerConfig())
	}
	log.Info("listening", "grpc", grpcLis.Addr().String(), "http", httpLis.Addr().String(),
		"stale_after", opts.StaleAfter.String(), "max_report_bytes", opts.MaxReportBytes,
		"node_image_series", opts.NodeImageSeries, "node_endpoint_series", opts.NodeEndpointSeries, "compat_metrics", opts.CompatMetrics,
		"forget_after", opts.ForgetAfter.String(), "max_node_images", opts.MaxNodeImages, "max_node_endpoints", opts.MaxNodeEndpoints,
		"max_node_bytes", opts.MaxNodeBytes,
		"auth", opts.Auth, "http_auth", opts.HTTPAuth, "tls", opts.TLSDir != "", "http_tls", opts.HTTPTLS,
		"probe_replicas", opts.ProbeReplicas, "registry_budget", opts.RegistryBudgets.String())
	for _, off := range srv.offNotices {
		log.Warn(off)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "timeout", opts.ShutdownTimeout.String())
	case runErr = <-srv.serve(grpcLis, httpLis):
	}
	if err := srv.shutdown(ctx, log, opts.ShutdownTimeout); err != nil {
		runErr = errors.Join(runErr, err)
	}
	log.Info("stopped")
	return runErr
}

// servers are the aggregator's gRPC and HTTP servers, wired to the state,
// the diagnosis and the metrics.
type servers struct {
	// offNotices say what protection is off (--auth=none, --insecure,
	// --http-auth=none, --lend-credentials=unverified-lab): logged at
	// start and shown on the status page.
	offNotices []string
	// keypair is --tls-dir's, nil with --insecure: gRPC's, and
	// --http-listen's with --http-tls.
	keypair *tlsfiles.Keypair

	ingest *ingest.Server
	grpc   *grpc.Server
	http   *http.Server
	ready  web.Readiness
}

// newServers builds the state, the Kubernetes watches (when kube is set)
// and the analyzer, starts the watches and the analyzer under ctx, and
// returns the servers over them.
func newServers(ctx context.Context, log *slog.Logger, opts *options.Options, kube *kubeapi.Config) (*servers, error) {
	store := state.New(opts.StaleAfter, state.WithForgetAfter(opts.ForgetAfter))
	bounds := ingest.Bounds{
		PerNode:              state.Limits{Images: opts.MaxNodeImages, Endpoints: opts.MaxNodeEndpoints, Bytes: opts.MaxNodeBytes},
		FirstReport:          opts.FirstReportTimeout,
		MaxConcurrentStreams: uint32(opts.MaxConcurrentStreams),
		Version:              version,
	}
	var planner *shard.Planner // nil: sharding off
	if opts.ProbeReplicas > 0 {
		planner = shard.New(shard.Options{Replicas: opts.ProbeReplicas, Budgets: opts.RegistryBudgets, Interval: opts.AgentInterval, Sink: store, Log: log})
	}
	compat := options.ResolveCompat(opts.CompatMetrics, kube != nil)
	if compat == metrics.CompatOff && opts.CompatMetrics == "" {
		log.Info("k8s-image-availability-exporter compatibility metrics off: they need the Kubernetes API to name workloads (--compat-metrics=current has them per pod)")
	}
	opts.CompatMetrics = compat // what applies, for the startup log
	collectorCfg := metrics.Config{NodeImageSeries: opts.NodeImageSeries, NodeEndpointSeries: opts.NodeEndpointSeries, CompatSchema: compat}
	filter, err := imagefilter.New(opts.IgnoredImages, opts.AllowedImages, opts.NamespaceLabel)
	if err != nil {
		return nil, err
	}
	var client kubernetes.Interface // nil without the API
	if kube != nil {
		if client, err = kubernetes.NewForConfig(kube.Rest); err != nil {
			return nil, fmt.Errorf("client of the Kubernetes API (%s): %w", kube.Source, err)
		}
	}
	anOpts := analyzer.Options{Filter: filter}
	var dir analyzer.Directory         // nil without the API
	var pods cache.SharedIndexInformer // kubewatch's, nil without the API
	if kube != nil {
		// Pods and their owners are watched for the risk assessment and
		// the compatibility metrics.
		watcher, err := kubewatch.New(kube.Rest, log, kubewatch.Options{
			Owners:     true,
			Namespaces: filter.SelectsNamespaces(),
			OnNodeDeleted: func(name string) {
				store.Forget(name)
				if planner != nil {
					planner.Forget(name)
				}
			},
		})
		if err != nil {
			return nil, err
		}
		watcher.Start(ctx)
		dir, pods = watcher, watcher.PodInformer()
		bounds.Nodes = watcher // reports only for Nodes that exist
		filter.SetNamespaces(watcher)
		anOpts.Pods = watcher
		if compat != metrics.CompatOff {
			collectorCfg.Owners = watcher
		}
		collectorCfg.APINodes = apiNodes(watcher)
		collectorCfg.NeverReportedAfter = opts.FirstReportTimeout
		if opts.NodeCondition {
			nc := nodecondition.New(client, log)
			anOpts.OnAnalysis = nc.Observe
			go nc.Run(ctx)
			log.Info("writing the " + string(nodecondition.Type) + " condition on Nodes, with Events on changes")
		}
		if opts.ScrapeTokenSecret != "" {
			ns, name, _ := strings.Cut(opts.ScrapeTokenSecret, "/")
			go scrapetoken.New(client, scrapetoken.Options{
				Namespace: ns, Secret: name, ServiceAccount: opts.ScrapeTokenServiceAccount,
				Audience: opts.HTTPTokenAudiences[0], Log: log.With("component", "scrapetoken"),
			}).Run(ctx)
		}
	} else {
		if opts.NodeCondition {
			log.Warn("--node-condition needs the Kubernetes API; off")
		}
		if opts.ScrapeTokenSecret != "" {
			log.Warn("--scrape-token-secret needs the Kubernetes API; off")
		}
		if filter.SelectsNamespaces() {
			log.Warn("--namespace-label needs the Kubernetes API; no namespace is selected without it")
		}
	}
	an := analyzer.NewAnalyzerWith(store, dir, log, anOpts)
	collectorCfg.Risk = an.Risk
	go an.Run(ctx, analyzeEvery)

	lender, err := newLender(ctx, log, opts, kube, pods)
	if err != nil {
		return nil, err
	}
	var offNotices []string
	if opts.LendCredentials == lend.ModeUnverifiedLab {
		offNotices = append(offNotices, "credential lending to unverified callers (--lend-credentials=unverified-lab): anyone who reaches the gRPC port can read the pull secrets of any node's pods; for a lab only")
	}

	reports := metrics.NewReports(ingest.Kinds(), append(ingest.Reasons(), ingest.BoundReasons()...))
	go store.RunSweeper(ctx, sweepEvery(opts.StaleAfter), func(gone []string) {
		reports.NodesForgotten(gone)
		if planner != nil {
			for _, n := range gone {
				planner.Forget(n)
			}
		}
		log.Info("forgot nodes silent for --forget-after", "nodes", len(gone), "forget_after", opts.ForgetAfter.String(), "first", gone[0])
	})
	refusals := authn.NewRefusals(log)
	cs := []prometheus.Collector{metrics.NewCollector(store, an, collectorCfg), reports, refusals, lender, metrics.NewBuildInfo(buildinfo.Read(version))}
	s := &servers{ingest: ingest.NewServer(store, reports, log), offNotices: offNotices}
	s.ingest.SetBounds(bounds)
	s.ingest.SetLender(lender)
	if planner != nil {
		cs = append(cs, shard.NewCollector(planner))
		s.ingest.SetSharder(planner)
	}
	registry := metrics.NewRegistry(cs...)
	grpcOpts, err := s.grpcSecurity(log, opts, kube, refusals)
	if err != nil {
		return nil, err
	}
	s.grpc = ingest.NewGRPCServer(s.ingest, opts.MaxReportBytes, grpcOpts...)
	var handler http.Handler = web.NewHandler(registry, &s.ready,
		statusPage(an, store, log).WithNotices(s.offNotices...))
	if opts.Pprof {
		handler = web.WithProfiling(handler)
	}
	if opts.HTTPAuth == options.AuthKubernetes {
		httpClient, err := authClient(kube, opts, "http-auth")
		if err != nil {
			return nil, err
		}
		guard, err := authn.NewHTTP(httpClient, opts.HTTPTokenAudiences, log)
		if err != nil {
			return nil, err
		}
		if len(opts.HTTPTokenAudiences) > 0 {
			log.Info("HTTP callers' tokens must be for one of these audiences", "audiences", strings.Join(opts.HTTPTokenAudiences, ","))
		}
		// The kubelet's probes carry no token.
		handler = guard.Wrap(handler, "/healthz", "/readyz")
	}
	s.http = web.NewServer(handler)
	return s, nil
}

// newLender builds and starts credential lending (aggregator/pkg/lend):
// off without the Kubernetes API or with --lend-credentials=off.
// pods is kubewatch's pod informer, which lending shares (nil: its own).
func newLender(ctx context.Context, log *slog.Logger, opts *options.Options, kube *kubeapi.Config, pods cache.SharedIndexInformer) (*lend.Lender, error) {
	var client kubernetes.Interface
	if kube != nil && opts.LendCredentials != lend.ModeOff {
		cfg := rest.CopyConfig(kube.Rest)
		cfg.UserAgent = "pullwatch-aggregator"
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("credential lending: Kubernetes client for %s: %w", cfg.Host, err)
		}
		client = c
	}
	l, err := lend.New(client, lend.Options{Mode: opts.LendCredentials, Log: log.With("component", "lend"), Pods: pods})
	if err != nil {
		return nil, err
	}
	l.Start(ctx)
	return l, nil
}

// sweepEvery is how often nodes silent for --forget-after are looked for:
// a tenth of --stale-after, between 1s and a minute.
func sweepEvery(staleAfter time.Duration) time.Duration {
	return min(max(staleAfter/10, time.Second), time.Minute)
}

// authClient is a Kubernetes client of authentication's own, named who in
// its user agent, with its own rate limits (--auth-qps, --auth-burst): a
// flood of junk tokens queues behind no other API call, and no other API
// call behind it. The agents' reviews and the HTTP callers' each get one.
func authClient(kube *kubeapi.Config, opts *options.Options, who string) (kubernetes.Interface, error) {
	if kube == nil {
		return nil, fmt.Errorf("%s needs the Kubernetes API", who)
	}
	cfg := rest.CopyConfig(kube.Rest)
	cfg.QPS, cfg.Burst, cfg.RateLimiter = float32(opts.AuthQPS), opts.AuthBurst, nil
	cfg.UserAgent = "pullwatch-aggregator/" + who
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: Kubernetes client for %s: %w", who, cfg.Host, err)
	}
	return c, nil
}

// grpcSecurity returns the gRPC server options for TLS (--tls-dir) and
// agent authentication (--auth), and notes in s.offNotices what is off.
func (s *servers) grpcSecurity(log *slog.Logger, opts *options.Options, kube *kubeapi.Config, refusals *authn.Refusals) ([]grpc.ServerOption, error) {
	var out []grpc.ServerOption
	if opts.Insecure {
		s.offNotices = append(s.offNotices, "gRPC without TLS (--insecure): agent reports and tokens cross the network in plaintext")
	} else {
		keypair, err := tlsfiles.LoadKeypair(opts.TLSDir)
		if err != nil {
			return nil, fmt.Errorf("--tls-dir: %w (mount the aggregator's TLS Secret there, see docs/security.md, or run with --insecure)", err)
		}
		out = append(out, grpc.Creds(credentials.NewTLS(keypair.ServerConfig())))
		s.keypair = keypair
		log.Info("gRPC TLS from files, reloaded when they change", "dir", opts.TLSDir, "http_too", opts.HTTPTLS)
	}
	if opts.Auth == options.AuthNone {
		s.offNotices = append(s.offNotices, "agent authentication is off (--auth=none): anyone who reaches the gRPC port can report for any node")
	} else {
		client, err := authClient(kube, opts, "agent-auth")
		if err != nil {
			return nil, err
		}
		v, err := authn.NewVerifier(authn.VerifierConfig{
			Reviews:        client.AuthenticationV1().TokenReviews(),
			Pods:           authn.ClientPods{Client: client},
			ServiceAccount: opts.AgentServiceAccount,
		})
		if err != nil {
			return nil, fmt.Errorf("--agent-service-account: %w", err)
		}
		out = append(out, authn.ServerOptions(v, refusals)...)
		log.Info("agents authenticated with TokenReview", "audience", authn.Audience, "service_account", opts.AgentServiceAccount,
			"auth_qps", opts.AuthQPS, "auth_burst", opts.AuthBurst, "review_timeout", authn.DefaultReviewTimeout.String(),
			"max_reviews_in_flight", authn.DefaultMaxInFlight)
	}
	if opts.HTTPAuth == options.AuthNone {
		s.offNotices = append(s.offNotices, "HTTP authentication is off (--http-auth=none): anyone who reaches the HTTP port reads /metrics and the status page")
	} else if !opts.HTTPTLS {
		s.offNotices = append(s.offNotices, "HTTP without TLS (no --http-tls): scrapers' bearer tokens cross the network in plaintext")
	}
	return out, nil
}

// serve serves on the listeners and marks the aggregator ready. The
// returned channel receives a server's error should one stop.
func (s *servers) serve(grpcLis, httpLis net.Listener) <-chan error {
	errc := make(chan error, 2)
	go func() {
		if err := s.http.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http server: %w", err)
		}
	}()
	// The gRPC listener is bound, so agent connections queue from here on
	// even before Serve accepts them: ready now. (Set here rather than in
	// the goroutine so that it cannot land after shutdown's Set(false).)
	s.ready.Set(true)
	go func() {
		if err := s.grpc.Serve(grpcLis); err != nil {
			errc <- fmt.Errorf("grpc server: %w", err)
		}
	}()
	return errc
}

// shutdown stops being ready so no new traffic is routed here, ends agent
// streams so agents reconnect elsewhere, then lets in-flight scrapes
// finish, all within timeout.
func (s *servers) shutdown(ctx context.Context, log *slog.Logger, timeout time.Duration) error {
	s.ready.Set(false)
	deadline := time.Now().Add(timeout)
	s.ingest.Drain()
	stopGRPC(s.grpc, time.Until(deadline), log)
	shutdownCtx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	if err := s.http.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("http shutdown: %w", err)
	}
	return nil
}

// stopGRPC stops gracefully, or forcibly once timeout has passed.
func stopGRPC(s *grpc.Server, timeout time.Duration, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		log.Warn("gRPC graceful stop timed out; closing remaining connections")
		s.Stop()
		<-done
	}
}

// statusPage is the status page with the risk section.
func statusPage(an *analyzer.Analyzer, store *state.Store, log *slog.Logger) *web.StatusPage {
	p := web.NewStatusPage(an, store, log)
	p.Risk = an.Risk
	return p
}

// apiNodes adapts the watcher's Nodes for the never-reporting nodes of
// the metrics.
func apiNodes(w *kubewatch.Watcher) func() ([]metrics.APINode, bool) {
	return func() ([]metrics.APINode, bool) {
		facts, synced := w.Nodes()
		out := make([]metrics.APINode, len(facts))
		for i, f := range facts {
			out[i] = metrics.APINode{Name: f.Name, Zone: f.Zone, Created: f.Created, Ready: f.Ready, Windows: f.Windows}
		}
		return out, synced
	}
}
