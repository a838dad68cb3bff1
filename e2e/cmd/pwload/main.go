// Command pwload is the aggregator's load generator: it starts the real
// pullwatch-aggregator binary, connects thousands of simulated agents to it
// over loopback gRPC speaking the real pullwatch.v1 proto, and measures
// what issue 14 asks of the defaults at scale: the time to ingest a full
// round, /metrics and status page answer times, the aggregator's RSS, the
// probe assignments (requests per interval, naive against sharded) and how
// fast a joining node gets its assignments.
//
//	go run ./e2e/cmd/pwload --aggregator-bin bin/pullwatch-aggregator --nodes 5000 --images 100 --distinct 2000 --registries 20
//
// Every message a phase sends is built and encoded before the phase's clock
// starts, so that the times measure the aggregator and the wire, not the
// generator: real agents build their reports on their own nodes. pwload's
// own CPU during each phase is printed beside the aggregator's. A
// GOMEMLIMIT in pwload's environment is the aggregator's (it inherits it);
// pwload itself runs without one.
//
// The simulated agents do not talk to registries: a sharded agent "HEADs"
// exactly the images its assignments leave to it (and the images no
// assignment names yet) and pings each registry endpoint it uses once per
// round; pwload counts those requests as a registry's access log would.
// The real agent's requests are counted at a real registry by e2e/shard.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pullwatch/pullwatch/e2e/harness/grpcraw"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

type config struct {
	bin        string
	extraArgs  string
	nodes      int
	images     int
	distinct   int
	registries int
	zones      int
	conns      int
	failing    float64
	rounds     int
	settle     time.Duration
	heapFile   string
	cpuFile    string
	ownCPUFile string
	profiled   int
}

func main() {
	var c config
	flag.StringVar(&c.bin, "aggregator-bin", "bin/pullwatch-aggregator", "the aggregator binary to start")
	flag.StringVar(&c.extraArgs, "aggregator-args", "", "extra aggregator flags, space separated (e.g. --node-image-series=all)")
	flag.IntVar(&c.nodes, "nodes", 5000, "simulated agents")
	flag.IntVar(&c.images, "images", 100, "images per node")
	flag.IntVar(&c.distinct, "distinct", 2000, "distinct images in the cluster")
	flag.IntVar(&c.registries, "registries", 20, "registries the images are spread over")
	flag.IntVar(&c.zones, "zones", 3, "zones the nodes are spread over")
	flag.IntVar(&c.conns, "conns", 50, "gRPC connections the agents' streams share")
	flag.Float64Var(&c.failing, "failing", 0.01, "share of distinct images absent from their registry")
	flag.IntVar(&c.rounds, "rounds", 3, "full rounds to time after the first")
	flag.DurationVar(&c.settle, "settle", 5*time.Second, "wait after connecting before measuring rounds")
	flag.StringVar(&c.heapFile, "heap-profile", "", "write the aggregator's heap profile (after a GC) to this `file` once the rounds are ingested (go tool pprof)")
	flag.StringVar(&c.cpuFile, "cpu-profile", "", "write the aggregator's CPU profile of one full round (10 s from its start; --profile-round) to this `file`")
	flag.StringVar(&c.ownCPUFile, "own-cpu-profile", "", "write pwload's own CPU profile of one full round (its senders, the load generator's share of the machine; --profile-round) to this `file`")
	flag.IntVar(&c.profiled, "profile-round", 1, "the full round --cpu-profile and --own-cpu-profile profile: 1 is the round of snapshots, 2 and later rounds of updates")
	flag.Parse()
	if (c.cpuFile != "" || c.ownCPUFile != "") && (c.profiled < 1 || c.profiled > c.rounds) {
		fmt.Fprintf(os.Stderr, "pwload: --profile-round %d: there are %d full rounds (--rounds); profile one of 1 to %d\n", c.profiled, c.rounds, c.rounds)
		os.Exit(2)
	}
	// GOMEMLIMIT is for the aggregator (the child inherits the
	// environment); pwload holds every phase's encoded messages at once.
	debug.SetMemoryLimit(math.MaxInt64)
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintln(os.Stderr, "pwload:", err)
		os.Exit(1)
	}
}

// freePort is a free loopback address.
func freePort() (string, error) {
	port, err := proc.FreePort()
	return fmt.Sprintf("127.0.0.1:%d", port), err
}

func run(ctx context.Context, c config) error {
	grpcAddr, err := freePort()
	if err != nil {
		return err
	}
	httpAddr, err := freePort()
	if err != nil {
		return err
	}
	args := []string{"--grpc-listen=" + grpcAddr, "--http-listen=" + httpAddr, "--log-level=warn", "--stale-after=10m",
		"--auth=none", "--http-auth=none", "--insecure", "--pprof",
		// A real agent has a connection of its own; the simulated ones
		// share c.conns, so each carries nodes/conns streams (+1: the
		// node that joins at the end).
		fmt.Sprintf("--max-concurrent-streams=%d", c.nodes/c.conns+2)}
	if c.extraArgs != "" {
		args = append(args, strings.Fields(c.extraArgs)...)
	}
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.bin, err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	base := "http://" + httpAddr
	if err := waitReady(base); err != nil {
		return err
	}
	fmt.Printf("aggregator %s (pid %d), args %v\n", c.bin, pid, args)
	fmt.Printf("load: %d nodes × %d images, %d distinct over %d registries, %d zones, %.1f%% absent; load average %s\n",
		c.nodes, c.images, c.distinct, c.registries, c.zones, c.failing*100, proc.LoadAvg())

	conns := make([]*grpc.ClientConn, c.conns)
	for i := range conns {
		if conns[i], err = grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20))); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	world := newWorld(c)
	agents := make([]*agent, c.nodes)
	for i := range agents {
		agents[i] = world.agent(i)
	}

	// Round 0: every agent connects and sends its snapshot (it has no
	// assignments yet: it HEADs everything, as a fresh cluster does).
	if err := parallel(agents, func(a *agent) error { return a.prepare(true) }); err != nil {
		return err
	}
	start, cpu0, own0 := time.Now(), cpu(pid), cpu(os.Getpid())
	var wg sync.WaitGroup
	errs := make(chan error, c.nodes)
	sem := make(chan struct{}, 500)
	for i, a := range agents {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := a.connect(ctx, conns[i%len(conns)]); err != nil {
				errs <- err
				return
			}
			if err := a.send(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	fmt.Printf("\nconnect + first snapshot of every agent: %v, aggregator CPU %v (RSS %s), pwload CPU %v\n", time.Since(start).Round(time.Millisecond), cpu(pid)-cpu0, rss(pid), cpu(os.Getpid())-own0)
	time.Sleep(c.settle)
	naive, sharded, pings, delegated, assigned := world.requests(agents)
	fmt.Printf("assignments: %d agents got a directive; %d delegated, %d assigned keys in all\n", world.directed(agents), delegated, assigned)
	fmt.Printf("registry requests per interval: naive %d manifest HEADs (+ the same pings); sharded %d HEADs + %d /v2/ pings = %d (bound 1.2 × (distinct × k + nodes × endpoints) = %.0f)\n",
		naive, sharded, pings, sharded+pings, 1.2*float64(world.distinctSeen()*2+pings))

	// Full rounds: every agent sends a snapshot (its delegated images
	// marked), then rounds of updates.
	var profiled chan error
	for r := range c.rounds {
		snapshot := r == 0
		if err := parallel(agents, func(a *agent) error {
			if r > 0 {
				a.churn(world)
			}
			return a.prepare(snapshot)
		}); err != nil {
			return err
		}
		if r == c.profiled-1 && c.cpuFile != "" {
			// From the round's start: the messages are encoded ahead
			// of it (prepare), while the aggregator is idle.
			profiled = make(chan error, 1)
			go func() { profiled <- saveProfile(base+"/debug/pprof/profile?seconds=10", c.cpuFile) }()
		}
		var stopOwn func()
		if r == c.profiled-1 && c.ownCPUFile != "" {
			if stopOwn, err = profileSelf(c.ownCPUFile); err != nil {
				return err
			}
			defer stopOwn()
		}
		start, cpu0, own0 := time.Now(), cpu(pid), cpu(os.Getpid())
		if err := parallel(agents, (*agent).send); err != nil {
			return err
		}
		if stopOwn != nil {
			stopOwn()
			fmt.Printf("pwload's own CPU profile of round %d: %s\n", r+1, c.ownCPUFile)
		}
		kind := "updates (1% of images changed per node)"
		if snapshot {
			kind = "snapshots with delegated images"
		}
		fmt.Printf("full round %d, %s: ingested in %v, aggregator CPU %v (RSS %s), pwload CPU %v\n", r+1, kind, time.Since(start).Round(time.Millisecond), cpu(pid)-cpu0, rss(pid), cpu(os.Getpid())-own0)
	}

	if profiled != nil {
		if err := <-profiled; err != nil {
			return err
		}
		fmt.Printf("CPU profile of round %d: %s\n", c.profiled, c.cpuFile)
	}
	// The heap profile's gc=1 collects garbage first: the third scrape's
	// go_memstats_heap_alloc_bytes below is then about the live state.
	heapFile := c.heapFile
	if heapFile == "" {
		heapFile = os.DevNull
	}
	if err := saveProfile(base+"/debug/pprof/heap?gc=1", heapFile); err != nil {
		return err
	}
	fmt.Printf("live heap after a GC: %s\n", metricValue(base, "go_memstats_heap_alloc_bytes"))
	if c.heapFile != "" {
		fmt.Printf("heap profile: %s (go tool pprof -sample_index=inuse_space %s %s)\n", c.heapFile, c.bin, c.heapFile)
	}
	for _, path := range []string{"/metrics", "/"} {
		for range 2 {
			cpu0 := cpu(pid)
			d, n, err := get(base + path)
			if err != nil {
				return err
			}
			fmt.Printf("GET %s: %v, aggregator CPU %v, %.1f MB\n", path, d.Round(time.Millisecond), cpu(pid)-cpu0, float64(n)/1e6)
		}
	}
	if d, n, err := get(base + "/metrics"); err == nil {
		total, fams := seriesCount(base)
		fmt.Printf("GET /metrics (third): %v, %.1f MB, %d series; largest families:", d.Round(time.Millisecond), float64(n)/1e6, total)
		names := slices.SortedFunc(maps.Keys(fams), func(a, b string) int { return fams[b] - fams[a] })
		for _, name := range names[:min(6, len(names))] {
			fmt.Printf(" %s %d", name, fams[name])
		}
		fmt.Println()
	}

	// A node joins: how long until it has its assignments.
	j := world.agent(c.nodes)
	if err := j.connect(ctx, conns[0]); err != nil {
		return err
	}
	if err := j.prepare(true); err != nil {
		return err
	}
	start = time.Now()
	if err := j.send(); err != nil {
		return err
	}
	select {
	case <-j.directed:
		fmt.Printf("node joins (%d images): assignments after %v\n", c.images, time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		fmt.Println("node joins: no assignments within 10s")
	}
	fmt.Printf("aggregator RSS %s, peak %s; load average %s\n", rss(pid), hwm(pid), proc.LoadAvg())
	return nil
}

func parallel(agents []*agent, f func(*agent) error) error {
	var wg sync.WaitGroup
	var first atomic.Pointer[error]
	sem := make(chan struct{}, 500)
	for _, a := range agents {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(a); err != nil {
				first.CompareAndSwap(nil, &err)
			}
		}()
	}
	wg.Wait()
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}

// world is the simulated cluster's images.
type world struct {
	c      config
	refs   []string
	absent []bool
	seen   map[int]bool
}

func newWorld(c config) *world {
	w := &world{c: c, refs: make([]string, c.distinct), absent: make([]bool, c.distinct), seen: map[int]bool{}}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range w.refs {
		w.refs[i] = fmt.Sprintf("%s/team-%d/app-%d:v%d", w.registry(i), i%37, i, i%5)
		w.absent[i] = r.Float64() < c.failing
	}
	return w
}

func (w *world) registry(i int) string { return fmt.Sprintf("reg-%02d.example:5000", i%w.c.registries) }

// agent is one simulated node.
type agent struct {
	name     string
	zone     string
	images   []int // indexes into world.refs
	w        *world
	st       pb.ReportService_ReportClient
	seq      uint64
	next     grpcraw.Message // the encoded message send sends (prepare)
	acks     chan uint64
	directed chan struct{}

	mu   sync.Mutex
	plan *pb.ProbeAssignments
}

func (w *world) agent(i int) *agent {
	r := rand.New(rand.NewPCG(uint64(i), 7))
	// Popular images are shared by many nodes: a Zipf-like pick over the
	// distinct images, plus unique ones so that every image appears.
	set := map[int]bool{}
	for len(set) < w.c.images {
		var idx int
		if r.IntN(2) == 0 {
			idx = r.IntN(w.c.distinct)
		} else {
			idx = int(float64(w.c.distinct) * r.Float64() * r.Float64())
		}
		set[idx] = true
	}
	a := &agent{name: fmt.Sprintf("node-%05d", i), zone: fmt.Sprintf("zone-%d", i%w.c.zones), w: w,
		acks: make(chan uint64, 4), directed: make(chan struct{}, 1)}
	for idx := range set {
		a.images = append(a.images, idx)
		w.seen[idx] = true
	}
	return a
}

func (w *world) distinctSeen() int { return len(w.seen) }

func (a *agent) connect(ctx context.Context, conn *grpc.ClientConn) error {
	st, err := pb.NewReportServiceClient(conn).Report(ctx, grpc.ForceCodec(grpcraw.Codec{}))
	if err != nil {
		return fmt.Errorf("%s: open stream: %w", a.name, err)
	}
	a.st = st
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				close(a.acks)
				return
			}
			switch b := m.Body.(type) {
			case *pb.AggregatorMessage_Ack:
				a.acks <- b.Ack.GetSequence()
			case *pb.AggregatorMessage_Directive:
				if pa := b.Directive.GetProbeAssignments(); pa != nil {
					a.mu.Lock()
					a.plan = pa
					a.mu.Unlock()
					select {
					case a.directed <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	return nil
}

func (a *agent) delegatedKeys() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]bool{}
	for _, k := range a.plan.GetDelegated() {
		out[k.KeyString()] = true
	}
	return out
}

func (a *agent) report(idx int, delegated bool) *pb.ImageReport {
	w := a.w
	now := timestamppb.Now()
	st, reason, code := pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "manifest found at https://"+w.registry(idx)+"/v2", int32(200)
	if w.absent[idx] {
		st, reason, code = pb.ImageStatus_IMAGE_STATUS_ABSENT, "manifest unknown", 404
	}
	im := &pb.ImageReport{
		Image: w.refs[idx], ImageId: fmt.Sprintf("sha256:%064x", idx), Digest: fmt.Sprintf("sha256:%064x", idx+1<<20),
		RepoDigests: []string{fmt.Sprintf("%s@sha256:%064x", strings.Split(w.refs[idx], ":v")[0], idx+1<<20)},
		InUse:       idx%3 != 0, Status: st, Reason: reason, CheckedAt: now, Registry: w.registry(idx),
		CredentialSource: "anonymous", Delegated: delegated,
		Endpoints: []*pb.EndpointResult{{Url: "https://" + w.registry(idx) + "/v2", Role: pb.EndpointRole_ENDPOINT_ROLE_UPSTREAM,
			Status: st, Reason: reason, Latency: durationpb.New(3 * time.Millisecond), CheckedAt: now, HttpStatus: code}},
	}
	if im.InUse {
		im.Containers = []*pb.ContainerRef{{Namespace: fmt.Sprintf("ns-%d", idx%50), Pod: fmt.Sprintf("app-%d-%s", idx, a.name),
			PodUid: fmt.Sprintf("uid-%d-%s", idx, a.name), Container: "app", ContainerId: fmt.Sprintf("c%d", idx), State: "CONTAINER_RUNNING"}}
	}
	return im
}

func (a *agent) snapshot() *pb.NodeSnapshot {
	del := a.delegatedKeys()
	s := &pb.NodeSnapshot{
		Node: &pb.Node{Name: a.name, AgentVersion: "pwload", Os: "linux", Architecture: "amd64",
			Labels:  map[string]string{"topology.kubernetes.io/zone": a.zone},
			Runtime: &pb.Runtime{Name: "containerd", Version: "1.6.20", ApiVersion: "v1", Endpoint: "unix:///run/containerd/containerd.sock"}},
		ObservedAt: timestamppb.Now(), Interval: durationpb.New(time.Minute),
	}
	for _, idx := range a.images {
		im := a.report(idx, false)
		if del[pb.ProbeKeyOf(im)] {
			im.Delegated = true
		}
		s.Images = append(s.Images, im)
	}
	return s
}

// churn replaces one image in a hundred, as a rollout would.
func (a *agent) churn(w *world) {
	n := max(1, len(a.images)/100)
	for i := range n {
		a.images[(int(a.seq)+i*7)%len(a.images)] = rand.IntN(w.c.distinct)
	}
}

// prepare builds and encodes the agent's next message: a snapshot, or an
// update of the images churn changed.
func (a *agent) prepare(snapshot bool) error {
	a.seq++
	msg := &pb.AgentMessage{Sequence: a.seq}
	s := a.snapshot()
	if snapshot || a.seq == 1 {
		msg.Body = &pb.AgentMessage_Snapshot{Snapshot: s}
	} else {
		// The changed images only (a real agent diffs against what it sent).
		n := max(1, len(a.images)/100)
		u := &pb.NodeUpdate{NodeName: a.name, ObservedAt: timestamppb.Now()}
		for i := range n {
			idx := (int(a.seq-1) + i*7) % len(a.images)
			u.Upserts = append(u.Upserts, s.Images[idx])
		}
		msg.Body = &pb.AgentMessage_Update{Update: u}
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		return fmt.Errorf("%s: encode: %w", a.name, err)
	}
	a.next = b
	return nil
}

// send sends the prepared message and waits for its ack.
func (a *agent) send() error {
	msg, seq := a.next, a.seq
	a.next = nil
	if err := a.st.SendMsg(msg); err != nil {
		return fmt.Errorf("%s: send: %w", a.name, err)
	}
	timeout := time.After(60 * time.Second)
	for {
		select {
		case got, ok := <-a.acks:
			if !ok {
				return fmt.Errorf("%s: stream ended", a.name)
			}
			if got == seq {
				return nil
			}
		case <-timeout:
			return fmt.Errorf("%s: no ack for %d within 60s", a.name, seq)
		}
	}
}

func (w *world) directed(agents []*agent) int {
	n := 0
	for _, a := range agents {
		a.mu.Lock()
		if a.plan != nil {
			n++
		}
		a.mu.Unlock()
	}
	return n
}

// requests counts one interval's registry requests: naive (every node
// HEADs every image), sharded (what the assignments leave to each node)
// and the /v2/ pings (each node, each registry endpoint it uses).
func (w *world) requests(agents []*agent) (naive, sharded, pings, delegated, assigned int) {
	for _, a := range agents {
		del := a.delegatedKeys()
		regs := map[string]bool{}
		a.mu.Lock()
		assigned += len(a.plan.GetAssigned())
		a.mu.Unlock()
		for _, idx := range a.images {
			naive++
			regs[w.registry(idx)] = true
			im := a.report(idx, false)
			if del[pb.ProbeKeyOf(im)] {
				delegated++
			} else {
				sharded++
			}
		}
		pings += len(regs)
	}
	return
}

// profileSelf starts pwload's own CPU profile into file; stop ends it and
// closes the file (once, however often it is called).
func profileSelf(file string) (stop func(), err error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("own CPU profile: %w", err)
	}
	return sync.OnceFunc(func() { pprof.StopCPUProfile(); _ = f.Close() }), nil
}

// saveProfile writes one of the aggregator's profiles (--pprof) to file.
func saveProfile(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", url, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", file, err)
	}
	return f.Close()
}

func waitReady(base string) error {
	err := proc.Poll(context.Background(), 30*time.Second, 100*time.Millisecond, func() error {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("aggregator not ready within 30s: %w", err)
	}
	return nil
}

func get(u string) (time.Duration, int64, error) {
	start := time.Now()
	resp, err := http.Get(u)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return 0, 0, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return time.Since(start), n, err
}

// runtimeLines are the aggregator's own Go runtime series pwload prints:
// where its resident memory goes.
var runtimeLines = []string{"go_goroutines ", "go_memstats_heap_alloc_bytes ", "go_memstats_heap_inuse_bytes ", "go_memstats_stack_inuse_bytes ", "go_memstats_sys_bytes ", "go_gc_gomemlimit_bytes "}

// metricValue is one unlabelled series of the aggregator's /metrics, a
// byte count in MiB.
func metricValue(base, name string) string {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return fmt.Sprintf("%.0f MiB", f/(1<<20))
		}
	}
	return "not found"
}

func seriesCount(base string) (int, map[string]int) {
	fams := map[string]int{}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1, fams
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); len(l) > 0 && l[0] != '#' {
			for _, p := range runtimeLines {
				if strings.HasPrefix(l, p) {
					v, _ := strconv.ParseFloat(strings.TrimPrefix(l, p), 64)
					if strings.HasSuffix(p, "bytes ") {
						fmt.Printf("aggregator %s%.0f MiB\n", p, v/(1<<20))
					} else {
						fmt.Printf("aggregator %s%.0f\n", p, v)
					}
				}
			}
			n++
			name, _, _ := strings.Cut(l, "{")
			name, _, _ = strings.Cut(name, " ")
			fams[name]++
		}
	}
	return n, fams
}

// usage is the aggregator's /proc usage now (zero if it cannot be read).
func usage(pid int) proc.Usage {
	u, _ := proc.UsageOf(pid)
	return u
}

func rss(pid int) string { return fmt.Sprintf("%d MiB", usage(pid).RSSKiB/1024) }
func hwm(pid int) string { return fmt.Sprintf("%d MiB", usage(pid).HWMKiB/1024) }

// cpu is the process's user + system CPU time so far.
func cpu(pid int) time.Duration { return usage(pid).CPU }
