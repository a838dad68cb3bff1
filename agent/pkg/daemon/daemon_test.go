package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pullwatch/pullwatch/agent/pkg/health"
	"github.com/pullwatch/pullwatch/agent/pkg/report"
	"github.com/pullwatch/pullwatch/agent/pkg/stream"
	"github.com/pullwatch/pullwatch/agent/pkg/stream/streamtest"
	"github.com/pullwatch/pullwatch/pkg/logging/logtest"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// result is what one fake round returns.
type result struct {
	node report.Node
	err  error
}

// fakeRounds runs a round per result sent on results; a round waits for
// its result, or for its context to end. started receives each round's
// start.
type fakeRounds struct {
	results chan result
	started chan struct{}
	// cancelled, when set, runs when a round's context ends before its
	// result arrives.
	cancelled func()
}

func newFakeRounds() *fakeRounds {
	return &fakeRounds{results: make(chan result), started: make(chan struct{}, 10)}
}

func (f *fakeRounds) Run(ctx context.Context) (report.Node, error) {
	f.started <- struct{}{}
	select {
	case r := <-f.results:
		return r.node, r.err
	case <-ctx.Done():
		if f.cancelled != nil {
			f.cancelled()
		}
		return report.Node{}, ctx.Err()
	}
}

// fakeTriggers triggers a round for each reason sent on fire, or fails at
// once with err.
type fakeTriggers struct {
	fire chan string
	err  error
}

func (f *fakeTriggers) Watch(ctx context.Context, trigger func(string)) error {
	if f.err != nil {
		return f.err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case reason := <-f.fire:
			trigger(reason)
		}
	}
}

// rig is a daemon wired to fakes: scripted rounds and triggers, a real
// stream client talking to an in-process aggregator, a real health monitor
// served on a loopback port.
type rig struct {
	t        *testing.T
	d        *Daemon
	rounds   *fakeRounds
	triggers *fakeTriggers
	agg      *streamtest.Server
	monitor  *health.Monitor
	logs     *logtest.Buffer
	url      string
	cancel   context.CancelFunc
	done     chan struct{}
}

func newRig(t *testing.T, interval time.Duration) *rig {
	t.Helper()
	r := &rig{t: t, rounds: newFakeRounds(), triggers: &fakeTriggers{fire: make(chan string)},
		agg: streamtest.NewServer(100)}
	sc := stream.New(streamtest.Start(t, r.agg), slog.New(slog.NewTextHandler(io.Discard, nil)))
	sc.MinBackoff, sc.MaxBackoff = 10*time.Millisecond, 20*time.Millisecond
	r.monitor = health.New(interval, sc.Connected)
	var log *slog.Logger
	log, r.logs = logtest.New()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.url = "http://" + ln.Addr().String()
	r.d = &Daemon{
		Rounds: r.rounds, Stream: sc, Health: r.monitor, Triggers: r.triggers, HTTP: ln,
		Interval: interval, AgentVersion: "v-test",
		Log: log,
	}
	return r
}

// start runs the daemon until the test ends or stop is called.
func (r *rig) start(ctx context.Context) {
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	go func() { r.d.Run(ctx); close(r.done) }()
	r.t.Cleanup(r.stop)
}

// stop cancels the daemon's context and waits for Run to return.
func (r *rig) stop() {
	r.cancel()
	r.waitStopped(r.d.shutdownTimeout() + time.Second)
}

func (r *rig) waitStopped(within time.Duration) {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(within):
		r.t.Fatalf("the daemon did not stop within %s", within)
	}
}

// round waits for the next round to start and ends it with res.
func (r *rig) round(res result) {
	r.t.Helper()
	select {
	case <-r.rounds.started:
	case <-time.After(5 * time.Second):
		r.t.Fatal("no round started")
	}
	r.rounds.results <- res
}

// message waits for the aggregator's next message.
func (r *rig) message() streamtest.Message {
	r.t.Helper()
	select {
	case m := <-r.agg.Got:
		return m
	case <-time.After(5 * time.Second):
		r.t.Fatal("nothing reached the aggregator")
		return streamtest.Message{}
	}
}

// get fetches path from the daemon's HTTP endpoint.
func (r *rig) get(path string) (int, string) {
	r.t.Helper()
	resp, err := http.Get(r.url + path)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// eventually polls cond for up to 5 seconds.
func (r *rig) eventually(what string, cond func() bool) {
	r.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			r.t.Fatalf("never: %s\nlogs:\n%s", what, r.logs)
		}
	}
}

// node is a report whose images have the statuses (words) given.
func node(statuses ...string) report.Node {
	n := report.Node{Node: "n1", ObservedAt: time.Now()}
	for i, word := range statuses {
		st, err := pb.ParseStatus(word)
		if err != nil {
			panic(err)
		}
		n.Images = append(n.Images, report.Image{Image: "registry.test/app:" + string(rune('a'+i)), Outcome: report.Outcome{Status: st}})
	}
	return n
}

func TestRoundsArePublishedAndMakeReady(t *testing.T) {
	r := newRig(t, time.Hour)
	r.start(context.Background())

	if code, body := r.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no round finished yet") {
		t.Errorf("/readyz before the first round: %d %q", code, body)
	}
	r.round(result{node: node("available", "absent")})
	m := r.message()
	snap := m.Msg.GetSnapshot()
	if m.Kind() != "snapshot" || len(snap.GetImages()) != 2 || snap.GetNode().GetAgentVersion() != "v-test" || snap.GetInterval().AsDuration() != time.Hour {
		t.Fatalf("first message: %v", m.Msg)
	}
	if got := snap.GetImages()[1].GetStatus(); got != pb.ImageStatus_IMAGE_STATUS_ABSENT {
		t.Errorf("second image status %v", got)
	}
	r.eventually("/readyz 200 once the snapshot is acknowledged", func() bool { code, _ := r.get("/readyz"); return code == http.StatusOK })
	if code, _ := r.get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d", code)
	}
	_, metrics := r.get("/metrics")
	for _, want := range []string{`pullwatch_agent_images{status="absent"} 1`, `pullwatch_agent_rounds_total{result="ok"} 1`, "pullwatch_agent_stream_connected 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if logs := r.logs.String(); !strings.Contains(logs, `msg="round done" trigger=start images=2 not_available=1`) {
		t.Errorf("logs:\n%s", logs)
	}
}

func TestTriggerRunsAnEarlyRound(t *testing.T) {
	r := newRig(t, time.Hour) // the interval never comes
	r.start(context.Background())
	r.round(result{node: node("available")})
	r.message()
	r.triggers.fire <- "containerd event /images/create"
	r.round(result{node: node("available", "available")})
	if m := r.message(); len(m.Msg.GetUpdate().GetUpserts()) != 1 {
		t.Fatalf("second message: %v", m.Msg)
	}
	if logs := r.logs.String(); !strings.Contains(logs, `msg="round done" trigger="containerd event /images/create" images=2`) {
		t.Errorf("logs:\n%s", logs)
	}
}

func TestIntervalRunsTheNextRound(t *testing.T) {
	r := newRig(t, 20*time.Millisecond)
	r.d.Triggers = nil
	r.start(context.Background())
	r.round(result{node: node("available")})
	r.round(result{node: node("available")})
	r.eventually("a round on the interval", func() bool { return strings.Contains(r.logs.String(), "trigger=interval") })
}

func TestFailedRound(t *testing.T) {
	r := newRig(t, time.Hour)
	r.triggers.err = errors.New("connect to containerd: no socket")
	r.start(context.Background())
	r.round(result{err: errors.New("CRI down")})
	r.eventually("the failure logged", func() bool {
		return strings.Contains(r.logs.String(), `level=ERROR msg="round failed" err="CRI down"`)
	})
	_, metrics := r.get("/metrics")
	if !strings.Contains(metrics, `pullwatch_agent_rounds_total{result="error"} 1`) {
		t.Errorf("/metrics:\n%s", metrics)
	}
	if code, _ := r.get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz after a failed first round: %d", code)
	}
	select {
	case m := <-r.agg.Got:
		t.Errorf("a failed round was published: %v", m.Msg)
	case <-time.After(50 * time.Millisecond):
	}
	if logs := r.logs.String(); !strings.Contains(logs, `level=WARN msg="containerd events unavailable; checking on the interval only" err="connect to containerd: no socket"`) {
		t.Errorf("logs:\n%s", logs)
	}
}

func TestSIGTERMStopsReadinessFirst(t *testing.T) {
	ctx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stopSignals()
	r := newRig(t, time.Hour)
	r.start(ctx)
	r.round(result{node: node("available")})
	r.message()
	r.eventually("ready", func() bool { code, _ := r.get("/readyz"); return code == http.StatusOK })

	// A round is in flight when the signal comes: by the time its context
	// ends, /readyz already fails.
	readyz := make(chan int, 1)
	r.rounds.cancelled = func() {
		rec := httptest.NewRecorder()
		r.monitor.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		readyz <- rec.Code
	}
	r.triggers.fire <- "containerd event /tasks/start"
	<-r.rounds.started
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r.waitStopped(DefaultShutdownTimeout)
	if code := <-readyz; code != http.StatusServiceUnavailable {
		t.Errorf("/readyz when the round was cancelled: %d, want 503", code)
	}
	if _, err := http.Get(r.url + "/readyz"); err == nil {
		t.Error("the HTTP endpoint still serves after the shutdown")
	}
	if logs := r.logs.String(); !strings.Contains(logs, `msg="shutting down"`) || strings.Contains(logs, "round failed") {
		t.Errorf("logs:\n%s", logs)
	}
}

// stuckRounds ignores its context until released.
type stuckRounds struct{ release chan struct{} }

func (s stuckRounds) Run(context.Context) (report.Node, error) {
	<-s.release
	return report.Node{}, errors.New("released")
}

func TestShutdownIsBounded(t *testing.T) {
	r := newRig(t, time.Hour)
	stuck := stuckRounds{release: make(chan struct{})}
	defer close(stuck.release) // let the round end, so no goroutine leaks
	r.d.Rounds = stuck
	r.d.ShutdownTimeout = 100 * time.Millisecond
	r.start(context.Background())
	r.cancel()
	r.waitStopped(time.Second)
	if logs := r.logs.String(); !strings.Contains(logs, "shutdown timed out") {
		t.Errorf("logs:\n%s", logs)
	}
}
