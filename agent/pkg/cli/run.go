package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/pullwatch/pullwatch/agent/pkg/cri"
	"github.com/pullwatch/pullwatch/agent/pkg/daemon"
	"github.com/pullwatch/pullwatch/agent/pkg/damping"
	"github.com/pullwatch/pullwatch/agent/pkg/events"
	"github.com/pullwatch/pullwatch/agent/pkg/health"
	"github.com/pullwatch/pullwatch/agent/pkg/round"
	"github.com/pullwatch/pullwatch/agent/pkg/stream"
	"github.com/pullwatch/pullwatch/pkg/buildinfo"
	"github.com/pullwatch/pullwatch/pkg/envflag"
	"github.com/pullwatch/pullwatch/pkg/gomemlimit"
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
	confirm        int
	stateFile      string
	transport      transportFlags
}

func (f *runFlags) register(s *envflag.Set, env Env) {
	f.common.register(s, env)
	f.interval = time.Minute
	f.watchEvents = true
	s.StringVar(&f.aggregator, "aggregator", "", aggregatorUsage)
	s.Var((*envflag.PositiveDuration)(&f.interval), "interval", "Time between two checks of every image (`duration`).")
	s.BoolVar(&f.watchEvents, "events", true, "Also check soon after containerd image and container events (containerd only).")
	s.StringVar(&f.containerdAddr, "containerd-address", "", "containerd `socket` for events. Empty: the CRI endpoint, when the runtime is containerd.")
	f.confirm = damping.DefaultConfirm
	s.Var(&envflag.IntRange{Value: &f.confirm, Min: 1, Max: 100}, "confirm",
		"Flap damping: an image's status changes only after this many consecutive checks agree (`count`, 1-100; 1 is off). "+
			"A change to available and the first check of an image are reported at once.")
	s.StringVar(&f.stateFile, "state-file", "",
		"`path` of a small JSON file keeping each image's reported status and since when, so an agent restart neither resets the since times "+
			"nor lets a blip through (the DaemonSet: /var/lib/pullwatch/agent-state.json on a hostPath). Empty: kept in memory only.")
	f.transport.register(s)
	s.StringVar(&f.httpListen, "http-listen", "", "`host:port` for /healthz (rounds keep succeeding), /readyz (first round published; not the aggregator stream, whose state is on /metrics) and /metrics (the agent's own metrics). Empty: off. The agent shares the node's network: pick a free node port.")
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
	// As the aggregator: the garbage collector works harder near the
	// DaemonSet's memory limit instead of letting the heap double past it.
	gomemlimit.FromCgroup(log)
	setGCPercent()
	replicas, err := f.aggregatorReplicas(log, f.aggregator)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent run: %v\n", err)
		return ExitSetup
	}
	// TLS to the aggregator (its CA) and the node-bound token on every
	// stream and on credential lending, or plaintext with --insecure.
	dialOpts, err := f.transport.dialOptions(log, f.aggregator)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent run: %v\n", err)
		return ExitSetup
	}
	// The checker needs lending's connection, made below. No directive
	// can come before it exists: the aggregator plans a node only once
	// its first snapshot arrived, and the daemon sends that from the
	// checker's first round.
	var plan atomic.Pointer[round.Checker]
	onDirective := func(d *pb.Directive) {
		checker := plan.Load()
		if checker == nil {
			return
		}
		if pa := d.GetProbeAssignments(); pa != nil {
			checker.Plan.Apply(pa, f.interval)
			log.Debug("probe assignments", "generation", pa.GetGeneration(), "delegated", len(pa.GetDelegated()), "assigned", len(pa.GetAssigned()))
		}
	}
	var (
		sc        daemon.Stream
		connected func() bool
		endpoints func() map[string]bool
		lendConn  *grpc.ClientConn // credential lending's connection
	)
	if replicas != nil {
		// One stream per ready aggregator replica, each dialed at its
		// pod address as it is (no resolver), in the Service's name.
		rs := stream.NewReplicas(func(addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient("passthrough:///"+addr, append(dialOpts, grpc.WithAuthority(replicas.authority))...)
		}, log)
		rs.Configure = func(c *stream.Client) { c.OnDirective = onDirective }
		go replicas.watch(ctx, rs.SetAddresses)
		sc, connected, endpoints = rs, rs.Connected, rs.Endpoints
		if lendConn, err = replicas.lenderConn(log, f.aggregator, dialOpts); err != nil {
			fmt.Fprintf(env.Stderr, "pullwatch-agent run: %v\n", err)
			return ExitSetup
		}
		defer lendConn.Close()
	} else {
		conn, err := grpc.NewClient(f.aggregator, dialOpts...)
		if err != nil {
			fmt.Fprintf(env.Stderr, "pullwatch-agent run: aggregator address %q: %v\n", f.aggregator, err)
			return ExitSetup
		}
		defer conn.Close()
		c := stream.New(conn, log.With("aggregator", f.aggregator))
		c.OnDirective = onDirective
		sc, connected = c, c.Connected
		endpoints = func() map[string]bool { return map[string]bool{f.aggregator: c.Connected()} }
		lendConn = conn // the stream's own connection
	}
	checker, client, err := f.setup(ctx, log, pb.NewReportServiceClient(lendConn))
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent run: %v\n", err)
		return ExitSetup
	}
	defer client.Close()
	checker.Deadline = f.roundDeadline(f.interval)
	plan.Store(checker)

	// Probe sharding: the aggregator's assignments steer the rounds while
	// a stream is up; without one the node checks every image itself.
	checker.Plan.SetActive(connected)
	mon := health.New(f.interval, connected)
	mon.ReportEndpoints(endpoints)
	mon.ReportBuild(buildinfo.Read(Version))
	d := &daemon.Daemon{
		Rounds:       damping.New(damping.Options{Confirm: f.confirm, Node: f.nodeName, StateFile: f.stateFile, Log: log}).Wrap(checker),
		Stream:       sc,
		Health:       mon,
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

	log.Info("agent running", "interval", f.interval, "aggregator", f.aggregator, "confirm", f.confirm, "state_file", f.stateFile)
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
