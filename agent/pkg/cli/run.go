package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pullwatch/pullwatch/agent/pkg/cri"
	"github.com/pullwatch/pullwatch/agent/pkg/daemon"
	"github.com/pullwatch/pullwatch/agent/pkg/events"
	"github.com/pullwatch/pullwatch/agent/pkg/health"
	"github.com/pullwatch/pullwatch/agent/pkg/stream"
	"github.com/pullwatch/pullwatch/pkg/envflag"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

const runSummary = `Runs the agent daemon: checks every image on this node every --interval
(and within seconds of containerd image or container events) and streams the
results to the aggregator over gRPC: a full snapshot after every connect,
then only what changed. Stops cleanly on SIGINT or SIGTERM.`

// runFlags are the flags of run.
type runFlags struct {
	common
	aggregator     string
	interval       time.Duration
	watchEvents    bool
	containerdAddr string
	httpListen     string
}

func (f *runFlags) register(s *envflag.Set, env Env) {
	f.common.register(s, env)
	f.interval = time.Minute
	f.watchEvents = true
	s.StringVar(&f.aggregator, "aggregator", "", aggregatorUsage)
	s.Var((*envflag.PositiveDuration)(&f.interval), "interval", "Time between two checks of every image (`duration`).")
	s.BoolVar(&f.watchEvents, "events", true, "Also check soon after containerd image and container events (containerd only).")
	s.StringVar(&f.containerdAddr, "containerd-address", "", "containerd `socket` for events. Empty: the CRI endpoint, when the runtime is containerd.")
	s.StringVar(&f.httpListen, "http-listen", "", "`host:port` for /healthz (rounds keep succeeding), /readyz (first round published, stream up) and /metrics (the agent's own metrics). Empty: off. The agent shares the node's network: pick a free node port.")
}

// runCommand parses run's flags, wires the daemon's parts and runs it
// until ctx ends.
func runCommand(ctx context.Context, args []string, env Env) int {
	s := envflag.New("pullwatch-agent run", "pullwatch-agent run --aggregator HOST:PORT [flags]", runSummary)
	var f runFlags
	f.register(s, env)
	if code, ok := parse(s, args, env, &f.common); !ok {
		return code
	}
	if f.aggregator == "" {
		fmt.Fprintln(env.Stderr, "pullwatch-agent run: no aggregator address: set --aggregator (env PULLWATCH_AGGREGATOR), or use 'pullwatch-agent check' for one local round")
		return ExitSetup
	}
	ctx, log := newLogger(ctx, env, &f.common)
	aggregatorOpts, err := f.aggregatorDialOptions(log, f.aggregator)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent run: %v\n", err)
		return ExitSetup
	}
	checker, client, err := f.setup(ctx, log)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent run: %v\n", err)
		return ExitSetup
	}
	defer client.Close()

	// Transport security and node-bound credentials come with the trust
	// issue; until then the stream is plaintext inside the cluster network.
	conn, err := grpc.NewClient(f.aggregator, append(aggregatorOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent run: aggregator address %q: %v\n", f.aggregator, err)
		return ExitSetup
	}
	defer conn.Close()
	sc := stream.New(conn, log.With("aggregator", f.aggregator))
	// Probe sharding: the aggregator's assignments steer the rounds while
	// the stream is up; without it the node checks every image itself.
	checker.Plan.SetActive(sc.Connected)
	sc.OnDirective = func(d *pb.Directive) {
		if pa := d.GetProbeAssignments(); pa != nil {
			checker.Plan.Apply(pa, f.interval)
			log.Debug("probe assignments", "generation", pa.GetGeneration(), "delegated", len(pa.GetDelegated()), "assigned", len(pa.GetAssigned()))
		}
	}
	d := &daemon.Daemon{
		Rounds:       checker,
		Stream:       sc,
		Health:       health.New(f.interval, sc.Connected),
		Interval:     f.interval,
		Next:         checker.Plan.NextRound,
		AgentVersion: Version,
		Log:          log,
	}
	if f.httpListen != "" {
		var lc net.ListenConfig
		if d.HTTP, err = lc.Listen(ctx, "tcp", f.httpListen); err != nil {
			fmt.Fprintf(env.Stderr, "pullwatch-agent run: --http-listen %s: %v\n", f.httpListen, err)
			return ExitSetup
		}
		log.Info("serving /healthz, /readyz and /metrics", "address", f.httpListen)
	}
	d.Triggers = f.triggers(ctx, log, client)

	log.Info("agent running", "interval", f.interval, "aggregator", f.aggregator)
	d.Run(ctx)
	return ExitOK
}

// triggers returns containerd's event watcher when --events is on and the
// runtime is containerd (or --containerd-address is set), else nil.
func (f *runFlags) triggers(ctx context.Context, log *slog.Logger, client *cri.Client) daemon.Triggers {
	if !f.watchEvents {
		return nil
	}
	addr := f.containerdAddr
	if addr == "" {
		if rt, err := client.Version(ctx); err == nil && rt.Name == "containerd" {
			addr = client.Endpoint()
		}
	}
	if addr == "" {
		log.Info("runtime is not containerd; checking on the interval only")
		return nil
	}
	return events.Watcher{Address: addr, Debounce: 2 * time.Second, Log: log}
}
