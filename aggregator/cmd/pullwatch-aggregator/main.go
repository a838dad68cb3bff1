// Command pullwatch-aggregator receives pullwatch-agent reports over gRPC
// and exposes them as Prometheus metrics. Run it with --help for flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/pullwatch/pullwatch/pkg/kubeapi"
	"github.com/pullwatch/pullwatch/pkg/logging"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/imagefilter"
	"github.com/pullwatch/pullwatch/aggregator/pkg/ingest"
	"github.com/pullwatch/pullwatch/aggregator/pkg/kubewatch"
	"github.com/pullwatch/pullwatch/aggregator/pkg/metrics"
	"github.com/pullwatch/pullwatch/aggregator/pkg/nodecondition"
	"github.com/pullwatch/pullwatch/aggregator/pkg/options"
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
	log.Info("starting "+options.Name, "version", version)

	// Without the API, nodes are never dropped, zones come from the labels
	// agents send, and the compatibility metrics name pods.
	kube, err := kubeapi.Announce(log, opts.Kubeconfig, "node-deletion tracking, Node zones and workload owners are")
	if err != nil {
		usageError(fmt.Errorf("%w (fix --kubeconfig / KUBECONFIG, or unset it to run without the Kubernetes API)", err))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, opts, kube); err != nil {
		log.Error("aggregator failed", logging.ErrKey, err)
		stop()
		os.Exit(exitFailure)
	}
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
	log.Info("listening", "grpc", grpcLis.Addr().String(), "http", httpLis.Addr().String(),
		"stale_after", opts.StaleAfter.String(), "max_report_bytes", opts.MaxReportBytes,
		"node_image_series", opts.NodeImageSeries, "compat_metrics", opts.CompatMetrics,
		"forget_after", opts.ForgetAfter.String(), "max_node_images", opts.MaxNodeImages, "max_node_endpoints", opts.MaxNodeEndpoints,
		"probe_replicas", opts.ProbeReplicas, "registry_budget", opts.RegistryBudgets.String())

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
		PerNode:              state.Limits{Images: opts.MaxNodeImages, Endpoints: opts.MaxNodeEndpoints},
		FirstReport:          opts.FirstReportTimeout,
		MaxConcurrentStreams: uint32(opts.MaxConcurrentStreams),
	}
	var planner *shard.Planner // nil: sharding off
	if opts.ProbeReplicas > 0 {
		planner = shard.New(shard.Options{Replicas: opts.ProbeReplicas, Budgets: opts.RegistryBudgets, Interval: opts.AgentInterval, Sink: store, Log: log})
	}
	collectorCfg := metrics.Config{NodeImageSeries: opts.NodeImageSeries, CompatSchema: opts.CompatMetrics}
	filter, err := imagefilter.New(opts.IgnoredImages, opts.AllowedImages, opts.NamespaceLabel)
	if err != nil {
		return nil, err
	}
	anOpts := analyzer.Options{Filter: filter}
	var dir analyzer.Directory // nil without the API
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
		dir = watcher
		bounds.Nodes = watcher // reports only for Nodes that exist
		filter.SetNamespaces(watcher)
		anOpts.Pods = watcher
		if opts.CompatMetrics != metrics.CompatOff {
			collectorCfg.Owners = watcher
		}
		if opts.NodeCondition {
			client, err := kubernetes.NewForConfig(kube.Rest)
			if err != nil {
				return nil, fmt.Errorf("kubernetes client for %s: %w", kube.Rest.Host, err)
			}
			nc := nodecondition.New(client, log)
			anOpts.OnAnalysis = nc.Observe
			go nc.Run(ctx)
			log.Info("writing the " + string(nodecondition.Type) + " condition on Nodes, with Events on changes")
		}
	} else {
		if opts.NodeCondition {
			log.Warn("--node-condition needs the Kubernetes API; off")
		}
		if filter.SelectsNamespaces() {
			log.Warn("--namespace-label needs the Kubernetes API; no namespace is selected without it")
		}
	}
	an := analyzer.NewAnalyzerWith(store, dir, log, anOpts)
	collectorCfg.Risk = an.Risk
	go an.Run(ctx, analyzeEvery)

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
	cs := []prometheus.Collector{metrics.NewCollector(store, an, collectorCfg), reports}
	s := &servers{ingest: ingest.NewServer(store, reports, log)}
	s.ingest.SetBounds(bounds)
	if planner != nil {
		cs = append(cs, shard.NewCollector(planner))
		s.ingest.SetSharder(planner)
	}
	registry := metrics.NewRegistry(cs...)
	s.grpc = ingest.NewGRPCServer(s.ingest, opts.MaxReportBytes)
	s.http = web.NewServer(web.NewHandler(registry, &s.ready, statusPage(an, store, log)))
	return s, nil
}

// sweepEvery is how often nodes silent for --forget-after are looked for:
// a tenth of --stale-after, between 1s and a minute.
func sweepEvery(staleAfter time.Duration) time.Duration {
	return min(max(staleAfter/10, time.Second), time.Minute)
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
