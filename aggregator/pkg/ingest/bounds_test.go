package ingest

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

// nodeList stands in for kubewatch's node cache (real in e2e/replicas and
// e2e/aggregator): the edge cases of not loaded and unknown on demand.
type nodeList struct {
	mu     sync.Mutex
	synced bool
	names  map[string]bool
}

func (l *nodeList) Node(name string) (string, bool, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return "", l.names[name], l.synced
}

func (o *countingObserver) StreamClosed(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rejected["closed:"+reason]++
}

func TestReportsOnlyForExistingNodes(t *testing.T) {
	nodes := &nodeList{names: map[string]bool{"node-a": true}}
	h := newBoundedHarness(t, Bounds{Nodes: nodes})
	if _, err := exchange(h.open(t), snapshot(1, "node-a")); status.Code(err) != codes.Unavailable {
		t.Fatalf("before the node list loaded: %v, want Unavailable", err)
	}
	nodes.mu.Lock()
	nodes.synced = true
	nodes.mu.Unlock()
	_, err := exchange(h.open(t), snapshot(1, "made-up"))
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("unknown node: %v, want FailedPrecondition", err)
	}
	mustAck(t, h.open(t), snapshot(1, "node-a"))
	if got := h.obs.rejectedCount(ReasonUnknownNode); got != 1 {
		t.Errorf("unknown_node refusals = %d, want 1", got)
	}
	if got := h.obs.rejectedCount(ReasonNodesLoading); got != 1 {
		t.Errorf("nodes_loading refusals = %d, want 1", got)
	}
	if refs := nodeImages(t, h.store, "made-up"); refs != nil || len(h.store.Nodes()) != 1 {
		t.Errorf("the store kept the unknown node: %v", h.store.Nodes())
	}
}

func TestPerNodeLimits(t *testing.T) {
	h := newBoundedHarness(t, Bounds{PerNode: state.Limits{Images: 2, Endpoints: 1}})
	if _, err := exchange(h.open(t), snapshot(1, "n", images(3, func(*pullwatchv1.ImageReport) {})...)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("3 images with a limit of 2: %v, want ResourceExhausted", err)
	}
	rs := h.open(t)
	mustAck(t, rs, snapshot(1, "n", img("a:1")))
	mustAck(t, rs, update(2, "n", []*pullwatchv1.ImageReport{img("b:1")}))
	_, err := exchange(rs, update(3, "n", []*pullwatchv1.ImageReport{img("c:1")}))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a third image by update: %v, want ResourceExhausted", err)
	}
	other := imgWith("d:1", func(im *pullwatchv1.ImageReport) { im.Endpoints[0].Url = "https://mirror.example/v2" })
	_, err = exchange(h.open(t), snapshot(1, "m", img("a:1"), other))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("two endpoints with a limit of 1: %v, want ResourceExhausted", err)
	}
	if h.obs.rejectedCount(ReasonNodeImageLimit) != 2 || h.obs.rejectedCount(ReasonNodeEndpointLimit) != 1 {
		t.Errorf("refusals: %v", h.obs.rejected)
	}
	if got := nodeImages(t, h.store, "n"); len(got) != 2 {
		t.Errorf("node n = %v, want its two images", got)
	}
}

func TestSecondStreamReplacesFirst(t *testing.T) {
	h := newHarness(t)
	first := h.open(t)
	mustAck(t, first, snapshot(1, "node-a"))
	second := h.open(t)
	mustAck(t, second, snapshot(1, "node-a"))
	if _, err := first.Recv(); status.Code(err) != codes.Aborted {
		t.Fatalf("the first stream after a second one for its node: %v, want Aborted", err)
	}
	mustAck(t, second, update(2, "node-a", nil))
	// Idle and duplicate streams do not count: one node, one agent.
	_ = h.open(t)
	waitFor(t, "one connected agent", func() bool { return h.store.ConnectedAgents() == 1 })
	h.obs.mu.Lock()
	replaced := h.obs.rejected["closed:"+ClosedReplaced]
	h.obs.mu.Unlock()
	if replaced != 1 {
		t.Errorf("replaced streams counted %d, want 1", replaced)
	}
}

func TestFirstReportDeadline(t *testing.T) {
	h := newBoundedHarness(t, Bounds{FirstReport: 200 * time.Millisecond})
	idle := h.open(t)
	start := time.Now()
	if _, err := idle.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a stream that sent nothing: %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("closed after %s", took)
	}
	// A stream that reported in time is not closed by the deadline.
	rs := h.open(t)
	mustAck(t, rs, snapshot(1, "node-a"))
	time.Sleep(300 * time.Millisecond)
	mustAck(t, rs, update(2, "node-a", nil))
}

func TestMaxConcurrentStreamsPerConnection(t *testing.T) {
	h := newBoundedHarness(t, Bounds{MaxConcurrentStreams: 2})
	first, second := h.open(t), h.open(t)
	mustAck(t, first, snapshot(1, "node-a"))
	mustAck(t, second, snapshot(1, "node-b"))
	// A third stream on the same connection waits for one of the two.
	third := make(chan error, 1)
	go func() {
		rs, err := h.client.Report(t.Context())
		if err == nil {
			_, err = exchange(rs, snapshot(1, "node-c"))
			_ = rs.CloseSend()
		}
		third <- err
	}()
	select {
	case err := <-third:
		t.Fatalf("a third stream was served with two open and a limit of 2 (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := first.CloseSend(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-third:
		if err != nil {
			t.Fatalf("the third stream once the first closed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the third stream was not served after the first closed")
	}
}

// TestVersionSkew: an agent outside the skew rule is refused with
// FailedPrecondition and a reason that names the rule, counted as
// version_skew; agents inside it, and development builds, are accepted.
func TestVersionSkew(t *testing.T) {
	h := newBoundedHarness(t, Bounds{Version: "v0.3.1"})
	withVersion := func(seq uint64, node, version string) *pullwatchv1.AgentMessage {
		m := snapshot(seq, node)
		m.GetSnapshot().Node.AgentVersion = version
		return m
	}
	_, err := exchange(h.open(t), withVersion(1, "old", "v0.1.4"))
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("agent v0.1.4, aggregator v0.3.1: %v, want FailedPrecondition", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "v0.2.x to v0.4.x") || !strings.Contains(msg, "version-skew") {
		t.Errorf("refusal %q does not say which versions are accepted and where the rule is", msg)
	}
	if _, err := exchange(h.open(t), withVersion(1, "new", "v1.0.0")); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("agent v1.0.0: %v, want FailedPrecondition", err)
	}
	for i, v := range []string{"v0.2.0", "v0.3.1", "v0.4.2-3-gabcdef0", "dev", ""} {
		mustAck(t, h.open(t), withVersion(1, "ok-"+strconv.Itoa(i), v))
	}
	if got := h.obs.rejectedCount(ReasonVersionSkew); got != 2 {
		t.Errorf("version_skew refusals = %d, want 2", got)
	}
	if nodes := h.store.Nodes(); len(nodes) != 5 {
		t.Errorf("the store has %d nodes, want the 5 accepted ones", len(nodes))
	}
}

// A node may keep only so many bytes of reports in the aggregator: one
// beyond it is refused and counted, and the node's last good state stays.
func TestPerNodeByteBudget(t *testing.T) {
	h := newBoundedHarness(t, Bounds{PerNode: state.Limits{Bytes: 64 << 10}})
	fat := func(ref string) *pullwatchv1.ImageReport {
		return imgWith(ref, func(im *pullwatchv1.ImageReport) {
			for i := range 200 {
				im.Containers = append(im.Containers, &pullwatchv1.ContainerRef{Namespace: strings.Repeat("n", 200), Pod: strings.Repeat("p", 200) + strconv.Itoa(i), Container: "c"})
			}
		})
	}
	rs := h.open(t)
	mustAck(t, rs, snapshot(1, "n", img("a:1")))
	mustAck(t, rs, update(2, "n", []*pullwatchv1.ImageReport{img("b:1")}))
	_, err := exchange(rs, update(3, "n", []*pullwatchv1.ImageReport{fat("c:1")}))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("an update past the byte budget: %v, want ResourceExhausted", err)
	}
	if got := nodeImages(t, h.store, "n"); len(got) != 2 {
		t.Errorf("node n = %v, want its last good two images", got)
	}
	if _, err := exchange(h.open(t), snapshot(1, "m", fat("a:1"))); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a snapshot past the byte budget: %v, want ResourceExhausted", err)
	}
	if got := h.obs.rejectedCount(ReasonNodeByteLimit); got != 2 {
		t.Errorf("node_byte_limit refusals = %d, want 2 (all: %v)", got, h.obs.rejected)
	}
	if !slices.Contains(BoundReasons(), string(ReasonNodeByteLimit)) {
		t.Errorf("BoundReasons() lacks %s", ReasonNodeByteLimit)
	}
}
