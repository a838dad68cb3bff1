package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pullwatch/pullwatch/agent/pkg/events"
	"github.com/pullwatch/pullwatch/agent/pkg/health"
	"github.com/pullwatch/pullwatch/agent/pkg/stream"
	"github.com/pullwatch/pullwatch/pkg/envflag"
)

const runSummary = `Runs the agent daemon: checks every image on this node every --interval
(and within seconds of containerd image or container events) and streams the
results to the aggregator over gRPC: a full snapshot after every connect,
then only what changed. Stops cleanly on SIGINT or SIGTERM.`

func runCommand(ctx context.Context, args []string, env Env) int {
	s := envflag.New("pullwatch-agent run", "pullwatch-agent run --aggregator HOST:PORT [flags]", runSummary)
	var c common
	c.register(s, env)
	aggregator := ""
	interval := time.Minute
	watchEvents := true
	containerdAddr := ""
	httpListen := ""
	s.StringVar(&aggregator, "aggregator", "", aggregatorUsage)
	s.Var((*envflag.PositiveDuration)(&interval), "interval", "Time between two checks of every image (`duration`).")
	s.BoolVar(&watchEvents, "events", true, "Also check soon after containerd image and container events (containerd only).")
	s.StringVar(&containerdAddr, "containerd-address", "", "containerd `socket` for events. Empty: the CRI endpoint, when the runtime is containerd.")
	s.StringVar(&httpListen, "http-listen", "", "`host:port` for /healthz (rounds keep succeeding), /readyz (first round published, stream up) and /metrics (the agent's own metrics). Empty: off. The agent shares the node's network: pick a free node port.")
	if code, ok := parse(s, args, env, &c); !ok {
		return code
	}
	if aggregator == "" {
		fmt.Fprintln(env.Stderr, "pullwatch-agent run: no aggregator address: set --aggregator (env PULLWATCH_AGGREGATOR), or use 'pullwatch-agent check' for one local round")
		return ExitSetup
	}
	log := newLogger(env, &c)
	aggregatorOpts, err := c.aggregatorDialOptions(log, aggregator)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent run: %v\n", err)
		return ExitSetup
	}
	checker, client, err := c.setup(ctx, log)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent run: %v\n", err)
		return ExitSetup
	}
	defer client.Close()

	// Transport security and node-bound credentials come with the trust
	// issue; until then the stream is plaintext inside the cluster network.
	conn, err := grpc.NewClient(aggregator, append(aggregatorOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent run: aggregator address %q: %v\n", aggregator, err)
		return ExitSetup
	}
	defer conn.Close()
	sc := stream.New(conn, log.With("aggregator", aggregator))
	done := make(chan struct{})
	go func() { sc.Run(ctx); close(done) }()

	monitor := health.New(interval, sc.Connected)
	if httpListen != "" {
		stopHTTP, err := serveHTTP(ctx, httpListen, monitor.Handler())
		if err != nil {
			fmt.Fprintf(env.Stderr, "pullwatch-agent run: --http-listen %s: %v\n", httpListen, err)
			return ExitSetup
		}
		defer stopHTTP()
		log.Info("serving /healthz, /readyz and /metrics", "address", httpListen)
	}

	trigger := make(chan string, 1)
	if watchEvents {
		addr := containerdAddr
		if addr == "" && checker.Runtime != nil {
			if rt, err := client.Version(ctx); err == nil && rt.Name == "containerd" {
				addr = client.Endpoint()
			}
		}
		if addr != "" {
			go func() {
				err := events.Watch(ctx, addr, 2*time.Second, func(reason string) {
					select {
					case trigger <- reason:
					default:
					}
				})
				if err != nil {
					log.Warn("containerd events unavailable; checking on the interval only", "err", err)
				}
			}()
		} else {
			log.Info("runtime is not containerd; checking on the interval only")
		}
	}

	log.Info("agent running", "interval", interval, "aggregator", aggregator)
	reason := "start"
	for {
		start := time.Now()
		node, err := checker.Run(ctx)
		switch {
		case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		case err != nil:
			monitor.Round(time.Since(start), nil, err)
			log.Error("round failed", "err", err)
		default:
			failing := 0
			for _, im := range node.Images {
				if im.Status != "available" {
					failing++
				}
			}
			monitor.Round(time.Since(start), &node, nil)
			log.Info("round done", "trigger", reason, "images", len(node.Images), "not_available", failing, "took", time.Since(start).Round(time.Millisecond))
			sc.Publish(node.Snapshot(Version, interval))
		}
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			<-done
			return ExitOK
		case <-time.After(interval):
			reason = "interval"
		case reason = <-trigger:
			log.Debug("early round", "trigger", reason)
		}
	}
}

// serveHTTP serves h on addr until the returned stop is called.
func serveHTTP(ctx context.Context, addr string, h http.Handler) (stop func(), err error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}
