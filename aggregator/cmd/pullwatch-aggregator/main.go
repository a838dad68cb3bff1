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

	"github.com/pullwatch/pullwatch/aggregator/pkg/analyzer"
	"github.com/pullwatch/pullwatch/aggregator/pkg/ingest"
	"github.com/pullwatch/pullwatch/aggregator/pkg/kubewatch"
	"github.com/pullwatch/pullwatch/aggregator/pkg/metrics"
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
	store := state.New(opts.StaleAfter)
	var planner *shard.Planner // nil: sharding off
	if opts.ProbeReplicas > 0 {
		planner = shard.New(shard.Options{Replicas: opts.ProbeReplicas, Budgets: opts.RegistryBudgets, Interval: opts.AgentInterval, Sink: store, Log: log})
	}
	collectorCfg := metrics.Config{NodeImageSeries: opts.NodeImageSeries, Compat: opts.CompatMetrics}
	var dir analyzer.Directory // nil without the API
	if kube != nil {
		watcher, err := kubewatch.New(kube.Rest, log, kubewatch.Options{
			Owners: opts.CompatMetrics,
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
		if opts.CompatMetrics {
			collectorCfg.Owners = watcher
		}
	}
	an := analyzer.NewAnalyzer(store, dir, log)
	go an.Run(ctx, analyzeEvery)

	reports := metrics.NewReports(ingest.Kinds(), ingest.Reasons())
	cs := []prometheus.Collector{metrics.NewCollector(store, an, collectorCfg), reports}
	s := &servers{ingest: ingest.NewServer(store, reports, log)}
	if planner != nil {
		cs = append(cs, shard.NewCollector(planner))
		s.ingest.SetSharder(planner)
	}
	registry := metrics.NewRegistry(cs...)
	s.grpc = ingest.NewGRPCServer(s.ingest, opts.MaxReportBytes)
	s.http = web.NewServer(web.NewHandler(registry, &s.ready, web.NewStatusPage(an, store, log)))
	return s, nil
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
