// Package daemon is the agent's long-running loop: a round every interval
// (and soon after a trigger such as a containerd event), each result
// recorded for /healthz, /readyz and /metrics and published on the stream
// to the aggregator. It works through small interfaces, so the command line
// wires the real parts and tests wire fakes.
package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/pullwatch/pullwatch/agent/pkg/report"
	"github.com/pullwatch/pullwatch/pkg/logging"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Rounds checks every image on the node once (round.Checker).
type Rounds interface {
	Run(ctx context.Context) (report.Node, error)
}

// Stream carries the latest snapshot to the aggregator (stream.Client):
// Run keeps it open until ctx ends, Publish hands it a new snapshot.
type Stream interface {
	Run(ctx context.Context)
	Publish(*pb.NodeSnapshot)
}

// Health records rounds and serves /healthz, /readyz and /metrics
// (health.Monitor). Stopping makes /readyz fail.
type Health interface {
	Round(took time.Duration, node *report.Node, err error)
	Stopping()
	Handler() http.Handler
}

// Triggers calls trigger when a round should run before the interval is
// up (events.Watcher), until ctx ends. An error means no triggers: rounds
// then run on the interval only.
type Triggers interface {
	Watch(ctx context.Context, trigger func(reason string)) error
}

// DefaultShutdownTimeout bounds a shutdown when Daemon.ShutdownTimeout is
// zero.
const DefaultShutdownTimeout = 5 * time.Second

// Daemon runs rounds until its context ends.
type Daemon struct {
	Rounds Rounds
	Stream Stream
	Health Health
	// Triggers, when set, make rounds happen sooner than the interval.
	Triggers Triggers
	// HTTP, when set, is where Health's handler is served.
	HTTP net.Listener
	// Interval is the time between two rounds.
	Interval time.Duration
	// Next, when set, says how long to wait for the next round instead of
	// Interval (round.Plan.NextRound: the aggregator's phase, or jitter);
	// it should never say more than Interval.
	Next func(now time.Time, interval time.Duration) time.Duration
	// AgentVersion goes into every snapshot.
	AgentVersion string
	// ShutdownTimeout bounds the shutdown after the context ends
	// (default DefaultShutdownTimeout).
	ShutdownTimeout time.Duration
	Log             *slog.Logger
}

// Run runs the daemon until ctx ends, then shuts down: /readyz fails
// first, then the round in flight, the stream and the triggers are
// cancelled, and the HTTP server closes. Run returns within
// ShutdownTimeout of ctx ending, logging what had not stopped by then.
func (d *Daemon) Run(ctx context.Context) {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Everything runs under work, which ends only after /readyz fails.
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stopWatching := context.AfterFunc(ctx, func() {
		d.Health.Stopping()
		cancel()
	})
	defer stopWatching()

	var srv *http.Server
	if d.HTTP != nil {
		srv = d.serveHTTP(log)
	}
	trigger := make(chan string, 1)
	var wg sync.WaitGroup
	wg.Go(func() { d.Stream.Run(work) })
	if d.Triggers != nil {
		wg.Go(func() { d.watch(work, log, trigger) })
	}
	wg.Go(func() { d.loop(work, log, trigger) })

	<-work.Done()
	log.Info("shutting down")
	deadline := time.Now().Add(d.shutdownTimeout())
	stopped := make(chan struct{})
	go func() { wg.Wait(); close(stopped) }()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		log.Warn("shutdown timed out: the round, stream or event watch has not stopped", "timeout", d.shutdownTimeout())
	}
	if srv != nil {
		sctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}
}

func (d *Daemon) shutdownTimeout() time.Duration {
	if d.ShutdownTimeout > 0 {
		return d.ShutdownTimeout
	}
	return DefaultShutdownTimeout
}

// serveHTTP serves Health's handler on d.HTTP until the server is shut
// down.
func (d *Daemon) serveHTTP(log *slog.Logger) *http.Server {
	srv := &http.Server{Handler: d.Health.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(d.HTTP); !errors.Is(err, http.ErrServerClosed) {
			log.Error("health endpoint stopped", logging.ErrKey, err)
		}
	}()
	return srv
}

// watch forwards d.Triggers' reasons to trigger, dropping those that
// arrive while one is already pending.
func (d *Daemon) watch(ctx context.Context, log *slog.Logger, trigger chan<- string) {
	err := d.Triggers.Watch(ctx, func(reason string) {
		select {
		case trigger <- reason:
		default:
		}
	})
	if err != nil {
		log.Warn("containerd events unavailable; checking on the interval only", logging.ErrKey, err)
	}
}

// loop runs a round at once, then after every interval or trigger, until
// ctx ends.
func (d *Daemon) loop(ctx context.Context, log *slog.Logger, trigger <-chan string) {
	reason := "start"
	for {
		d.round(ctx, log, reason)
		wait := d.Interval
		if d.Next != nil {
			wait = d.Next(time.Now(), d.Interval)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
			reason = "interval"
		case reason = <-trigger:
			timer.Stop()
			log.Debug("early round", "trigger", reason)
		}
	}
}

// round runs one round, records it and publishes its result. A round cut
// short by the shutdown is neither recorded nor published.
func (d *Daemon) round(ctx context.Context, log *slog.Logger, reason string) {
	start := time.Now()
	node, err := d.Rounds.Run(ctx)
	took := time.Since(start)
	switch {
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
	case err != nil:
		d.Health.Round(took, nil, err)
		log.Error("round failed", logging.ErrKey, err)
	default:
		d.Health.Round(took, &node, nil)
		log.Info("round done", "trigger", reason, "images", len(node.Images), "not_available", node.NotAvailable(), "took", took.Round(time.Millisecond))
		d.Stream.Publish(node.Snapshot(d.AgentVersion, d.Interval))
	}
}
