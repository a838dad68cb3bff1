package replicas

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// The flood: floodStreams streams held open at once, then floodSnapshots
// snapshots for nodes the cluster does not have, each of floodImages
// images (about 10 KB).
const (
	floodStreams   = 1000
	floodSnapshots = 10000
	floodImages    = 50
	floodConns     = 100 // connections the streams share (--max-concurrent-streams bounds each)
	floodWorkers   = 32
)

// usage is what the aggregator's own /metrics says of its memory and
// goroutines.
type usage struct{ heap, rss, goroutines float64 }

func (u usage) String() string {
	return fmt.Sprintf("heap %.1f MiB, resident %.1f MiB, %v goroutines", u.heap/(1<<20), u.rss/(1<<20), u.goroutines)
}

func usageOf(t *testing.T, r *replica) usage {
	t.Helper()
	body := r.metrics()
	var u usage
	var ok [3]bool
	u.heap, ok[0] = value(body, "go_memstats_heap_alloc_bytes")
	u.rss, ok[1] = value(body, "process_resident_memory_bytes")
	u.goroutines, ok[2] = value(body, "go_goroutines")
	if ok != [3]bool{true, true, true} {
		t.Fatalf("no go_memstats_heap_alloc_bytes, process_resident_memory_bytes or go_goroutines on %s", r.httpAddr)
	}
	return u
}

func ghostSnapshot(i int) *pullwatchv1.AgentMessage {
	snap := &pullwatchv1.NodeSnapshot{
		Node:       &pullwatchv1.Node{Name: "ghost-" + strconv.Itoa(i), AgentVersion: "flood"},
		ObservedAt: timestamppb.Now(),
		Interval:   durationpb.New(time.Minute),
	}
	for j := range floodImages {
		snap.Images = append(snap.Images, &pullwatchv1.ImageReport{
			Image: fmt.Sprintf("registry.example/team-%d/app-%d:v1.2.3", i%97, j), Registry: "registry.example",
			Status: pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE, InUse: true,
			Endpoints: []*pullwatchv1.EndpointResult{{Url: "https://registry.example/v2", Role: pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM,
				Status: pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE, HttpStatus: 200, Latency: durationpb.New(20 * time.Millisecond)}},
		})
	}
	return &pullwatchv1.AgentMessage{Sequence: 1, Body: &pullwatchv1.AgentMessage_Snapshot{Snapshot: snap}}
}

// TestFloodOfUnknownNodes: with the Kubernetes API, streams and snapshots
// for nodes that do not exist leave the aggregator's heap and goroutines
// where they were. The numbers are logged; docs/benchmarks.md has them.
func TestFloodOfUnknownNodes(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kube := cluster(t, ctx)
	port, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{name: "flooded", grpcAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	_, r.httpAddr, r.p = l.StartAggregator(t, "--kubeconfig", kube.Kubeconfig(), "--grpc-listen", r.grpcAddr, "--first-report-timeout", "20s")

	conns := make([]*grpc.ClientConn, floodConns)
	for i := range conns {
		if conns[i], err = grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
	}
	client := func(i int) pullwatchv1.ReportServiceClient {
		return pullwatchv1.NewReportServiceClient(conns[i%floodConns])
	}
	// send reports one snapshot on a new stream and returns how it ended.
	send := func(i int) error {
		rs, err := client(i).Report(ctx)
		if err != nil {
			return err
		}
		if err := rs.Send(ghostSnapshot(i)); err != nil {
			_, err = rs.Recv()
			return err
		}
		_, err = rs.Recv()
		return err
	}
	// The node list loaded: the real node's snapshot is accepted, and its
	// stream stays open, as its agent's would.
	lab.WaitFor(t, 60*time.Second, "the aggregator's node list loaded", func() (bool, string) {
		rs, err := client(0).Report(ctx)
		if err != nil {
			return false, err.Error()
		}
		m := ghostSnapshot(0)
		m.GetSnapshot().Node.Name = nodeName
		if err := rs.Send(m); err != nil {
			return false, err.Error()
		}
		_, err = rs.Recv()
		return err == nil, fmt.Sprint(err)
	}, r.p)
	// Every connection up before the baseline: the flood is of streams
	// and snapshots, not of connections.
	for _, c := range conns {
		c.Connect()
	}
	lab.WaitFor(t, 30*time.Second, "the flood's connections up", func() (bool, string) {
		for i, c := range conns {
			if c.GetState().String() != "READY" {
				return false, fmt.Sprintf("connection %d: %s", i, c.GetState())
			}
		}
		return true, ""
	}, r.p)
	startGCs := func() float64 { v, _ := value(r.metrics(), "go_gc_duration_seconds_count"); return v }()
	lab.WaitFor(t, 5*time.Minute, "two garbage collections before the flood", func() (bool, string) {
		v, _ := value(r.metrics(), "go_gc_duration_seconds_count")
		return v >= startGCs+2, fmt.Sprint(v)
	}, r.p)
	before := usageOf(t, r)

	// floodStreams streams open at once, saying nothing: each holds a
	// goroutine until its first report is due.
	streamCtx, closeStreams := context.WithCancel(ctx)
	var open []pullwatchv1.ReportService_ReportClient
	for i := range floodStreams {
		rs, err := client(i).Report(streamCtx)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		open = append(open, rs)
	}
	lab.WaitFor(t, 60*time.Second, "the idle streams open on the aggregator", func() (bool, string) {
		v, _ := value(r.metrics(), "pullwatch_agent_streams_open")
		return v >= floodStreams*0.9, fmt.Sprint(v)
	}, r.p)
	peakStreams := usageOf(t, r)
	connected, _ := value(r.metrics(), "pullwatch_agents_connected")
	if connected != 1 {
		t.Errorf("pullwatch_agents_connected %v with %d idle streams and one node reporting, want 1", connected, floodStreams)
	}
	// Each then reports a node the cluster does not have: refused.
	var refused atomic.Int64
	var wg sync.WaitGroup
	for i, rs := range open {
		wg.Go(func() {
			_ = rs.Send(ghostSnapshot(floodSnapshots + i))
			if _, err := rs.Recv(); status.Code(err) == codes.FailedPrecondition {
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	closeStreams()

	// floodSnapshots more, each on a stream of its own.
	start := time.Now()
	work := make(chan int)
	var peak usage
	var mu sync.Mutex
	for range floodWorkers {
		wg.Go(func() {
			for i := range work {
				if err := send(i); status.Code(err) == codes.FailedPrecondition {
					refused.Add(1)
				} else {
					t.Errorf("snapshot for ghost-%d: %v, want FailedPrecondition", i, err)
				}
				if i%2000 == 1999 {
					u := usageOf(t, r)
					mu.Lock()
					peak.heap, peak.rss, peak.goroutines = max(peak.heap, u.heap), max(peak.rss, u.rss), max(peak.goroutines, u.goroutines)
					mu.Unlock()
				}
			}
		})
	}
	for i := range floodSnapshots {
		work <- i
	}
	close(work)
	wg.Wait()
	took := time.Since(start)

	var after usage
	lab.WaitFor(t, 30*time.Second, "goroutines back to where they were", func() (bool, string) {
		after = usageOf(t, r)
		return after.goroutines <= before.goroutines+10, after.String()
	}, r.p)
	// What is left in the heap right after the flood is mostly garbage:
	// the heap after two collections since (the second empties the
	// buffer pools' sync.Pool victim caches) is what was kept. Both
	// readings of the baseline and of afterGC are taken the same way.
	gcs := func() float64 { v, _ := value(r.metrics(), "go_gc_duration_seconds_count"); return v }
	floodEnd := gcs()
	lab.WaitFor(t, 5*time.Minute, "two garbage collections after the flood", func() (bool, string) {
		n := gcs()
		return n >= floodEnd+2, fmt.Sprintf("%v collections, %v at the end of the flood", n, floodEnd)
	}, r.p)
	afterGC := usageOf(t, r)
	body := r.metrics()
	rejected, _ := value(body, `pullwatch_reports_rejected_total{reason="unknown_node"}`)
	nodes := 0.0
	for _, st := range []string{"fresh", "stale", "unregistered"} {
		v, _ := value(body, fmt.Sprintf("pullwatch_nodes{state=%q}", st))
		nodes += v
	}
	t.Logf("before:                     %s", before)
	t.Logf("%d idle streams open:     %s", floodStreams, peakStreams)
	t.Logf("during %d snapshots:     %s (peaks sampled every 2,000; %s, %.0f snapshots/s)", floodSnapshots, peak, took.Round(time.Millisecond), floodSnapshots/took.Seconds())
	t.Logf("after:                      %s", after)
	t.Logf("after two GCs:              %s", afterGC)
	logged, err := os.ReadFile(r.p.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	refusedLines, lines := strings.Count(string(logged), `msg="report refused"`), strings.Count(string(logged), "\n")
	t.Logf("the aggregator's log: %d lines in all, %d \"report refused\" lines", lines, refusedLines)
	if refusedLines > 1000 {
		t.Errorf("%d \"report refused\" lines for %d refusals: not rate-limited", refusedLines, floodStreams+floodSnapshots)
	}
	t.Logf("refused %d (pullwatch_reports_rejected_total{reason=\"unknown_node\"} %v); nodes in state: %v", refused.Load(), rejected, nodes)

	if got := refused.Load(); got != floodStreams+floodSnapshots || rejected != float64(got) {
		t.Errorf("refused %d, counted %v; want %d", got, rejected, floodStreams+floodSnapshots)
	}
	if nodes != 1 {
		t.Errorf("the aggregator holds %v nodes, want 1 (only the real one)", nodes)
	}
	// Flat: nothing of 10,000 snapshots of ~10 KB (100 MB through the
	// aggregator) is kept; what is left is garbage not yet collected.
	if afterGC.heap > before.heap+4<<20 {
		t.Errorf("heap went from %.1f to %.1f MiB after the flood and two garbage collections", before.heap/(1<<20), afterGC.heap/(1<<20))
	}
}
