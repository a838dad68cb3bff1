package shard

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func cands(n int, zones ...string) []Candidate {
	out := make([]Candidate, n)
	for i := range out {
		out[i] = Candidate{Node: fmt.Sprintf("node-%d", i)}
		if len(zones) > 0 {
			out[i].Zone = zones[i%len(zones)]
		}
	}
	return out
}

func TestChooseIsDeterministicAndOrderFree(t *testing.T) {
	c := cands(50)
	a := Choose("docker.io/library/nginx:1", c, 2)
	rev := slices.Clone(c)
	slices.Reverse(rev)
	b := Choose("docker.io/library/nginx:1", rev, 2)
	if !slices.Equal(a, b) || len(a) != 2 {
		t.Fatalf("Choose depends on candidate order: %v vs %v", a, b)
	}
}

// A node joining or leaving moves only the keys it wins or held.
func TestChooseStableUnderMembershipChange(t *testing.T) {
	c := cands(100)
	const keys = 2000
	before := make([][]string, keys)
	for i := range keys {
		before[i] = Choose(fmt.Sprintf("key-%d", i), c, 2)
	}
	// A node joins.
	joined := append(slices.Clone(c), Candidate{Node: "node-new"})
	moved := 0
	for i := range keys {
		after := Choose(fmt.Sprintf("key-%d", i), joined, 2)
		if !slices.Equal(before[i], after) {
			moved++
			if !slices.Contains(after, "node-new") {
				t.Fatalf("key-%d moved from %v to %v without the new node winning it", i, before[i], after)
			}
		}
	}
	// Expected share: k/(n+1) of the keys, about 40 of 2000.
	if moved > keys*2/101*2 {
		t.Errorf("%d of %d keys moved when one of 101 nodes joined", moved, keys)
	}
	// A node leaves: only its keys move.
	left := slices.DeleteFunc(slices.Clone(c), func(x Candidate) bool { return x.Node == "node-7" })
	for i := range keys {
		after := Choose(fmt.Sprintf("key-%d", i), left, 2)
		if !slices.Contains(before[i], "node-7") && !slices.Equal(before[i], after) {
			t.Fatalf("key-%d moved from %v to %v though node-7 did not hold it", i, before[i], after)
		}
	}
}

func TestChooseSpreadsZones(t *testing.T) {
	c := cands(30, "a", "b", "c")
	zone := map[string]string{}
	for _, x := range c {
		zone[x.Node] = x.Zone
	}
	for i := range 500 {
		got := Choose(fmt.Sprintf("key-%d", i), c, 3)
		seen := map[string]bool{}
		for _, n := range got {
			seen[zone[n]] = true
		}
		if len(seen) != 3 {
			t.Fatalf("key-%d: chose %v, zones %v; want three zones", i, got, seen)
		}
	}
	// More replicas than zones: one per zone first, then by score.
	if got := Choose("k", cands(6, "a", "b"), 4); len(got) != 4 {
		t.Fatalf("got %v", got)
	}
	// Fewer candidates than k: all of them.
	if got := Choose("k", cands(1), 2); len(got) != 1 {
		t.Fatalf("got %v", got)
	}
}

func TestChooseSpreadsLoad(t *testing.T) {
	c := cands(20)
	count := map[string]int{}
	for i := range 4000 {
		for _, n := range Choose(fmt.Sprintf("key-%d", i), c, 2) {
			count[n]++
		}
	}
	for n, v := range count {
		if v < 250 || v > 550 { // expected 400
			t.Errorf("%s probes %d of 4000 keys; want about 400", n, v)
		}
	}
}

// store is a Sink over a map, standing in for state.Store.
type store map[string]map[string]*pb.ImageReport

func (s store) ReplaceImage(node, ref string, fn func(*pb.ImageReport) *pb.ImageReport) bool {
	old, ok := s[node][ref]
	if !ok {
		return false
	}
	if im := fn(old); im != nil {
		s[node][ref] = im
	}
	return true
}

func (s store) apply(node string, ims []*pb.ImageReport) func() {
	return func() {
		s[node] = map[string]*pb.ImageReport{}
		for _, im := range ims {
			s[node][im.GetImage()] = im
		}
	}
}

func image(ref string, st pb.ImageStatus, delegated bool) *pb.ImageReport {
	return &pb.ImageReport{Image: ref, Registry: "reg:5000", Status: st, Delegated: delegated, CredentialSource: "anonymous",
		Digest:    "sha256:aaa",
		Endpoints: []*pb.EndpointResult{{Url: "http://reg:5000/v2", Status: st}}}
}

func node(name, zone string) *pb.Node {
	return &pb.Node{Name: name, Labels: map[string]string{ZoneLabel: zone}}
}

func TestPlannerSharesResults(t *testing.T) {
	s := store{}
	p := New(Options{Replicas: 1, Sink: s})
	const ref = "reg:5000/app:v1"
	names := []string{"n1", "n2", "n3"}
	watches := map[string]<-chan struct{}{}
	for _, n := range names {
		ch, stop := p.Watch(n)
		defer stop()
		watches[n] = ch
		ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)}
		p.Ingest(n, node(n, "z-"+n), true, ims, nil, s.apply(n, ims))
	}
	// One node probes, two are delegated.
	var prober string
	for _, n := range names {
		d := p.DirectiveSince(n, "")
		switch {
		case len(d.GetAssigned()) == 1:
			if prober != "" {
				t.Fatalf("two probers: %s and %s", prober, n)
			}
			prober = n
		case len(d.GetDelegated()) != 1:
			t.Fatalf("%s: plan %v", n, d)
		}
		select {
		case <-watches[n]:
		default:
			t.Errorf("%s was not told about its plan", n)
		}
	}
	// Delegated nodes report delegated; the prober finds the image gone.
	for _, n := range names {
		if n == prober {
			continue
		}
		ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)}
		p.Ingest(n, node(n, "z-"+n), true, ims, nil, s.apply(n, ims))
	}
	gone := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_ABSENT, false)}
	p.Ingest(prober, nil, false, gone, nil, func() { s[prober][ref] = gone[0] })
	for _, n := range names {
		im := s[n][ref]
		if im.GetStatus() != pb.ImageStatus_IMAGE_STATUS_ABSENT {
			t.Errorf("%s: %v, want absent", n, im.GetStatus())
		}
		if n != prober && im.GetSharedFrom() != prober {
			t.Errorf("%s: shared_from %q, want %q", n, im.GetSharedFrom(), prober)
		}
	}
	// A delegated node's later report is folded on the way in.
	var other string
	for _, n := range names {
		if n != prober {
			other = n
		}
	}
	ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)}
	p.Ingest(other, nil, true, ims, nil, s.apply(other, ims))
	if got := s[other][ref].GetStatus(); got != pb.ImageStatus_IMAGE_STATUS_ABSENT {
		t.Errorf("re-reported delegated image: %v, want absent", got)
	}
	// A node that cannot reach the registry reports unreachable itself,
	// and stops being a candidate: another node takes the key over.
	bad := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, false)}
	p.Ingest(prober, nil, true, bad, nil, s.apply(prober, bad))
	if got := s[prober][ref].GetStatus(); got != pb.ImageStatus_IMAGE_STATUS_UNREACHABLE {
		t.Errorf("unreachable node: %v", got)
	}
	probers := 0
	for _, n := range names {
		if n != prober && len(p.DirectiveSince(n, "").GetAssigned()) == 1 {
			probers++
		}
	}
	if probers != 1 {
		t.Errorf("%d reachable probers after %s lost the registry, want 1", probers, prober)
	}
	// Its last stream ends: it leaves the plan.
	p.Forget(prober)
	if p.DirectiveSince(prober, "") != nil {
		t.Error("forgotten node still has a plan")
	}
}

func TestPlannerSingleHolderProbes(t *testing.T) {
	p := New(Options{Replicas: 2})
	for i, n := range []string{"a", "b", "c"} {
		ims := []*pb.ImageReport{image(fmt.Sprintf("reg:5000/only-%d:v1", i), pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false),
			image("reg:5000/shared:v1", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)}
		p.Ingest(n, node(n, ""), true, ims, nil, func() {})
	}
	delegated := 0
	for _, n := range []string{"a", "b", "c"} {
		d := p.DirectiveSince(n, "")
		for _, k := range d.GetDelegated() {
			if k.GetImage() != "reg:5000/shared:v1" {
				t.Errorf("%s: an image only it has is delegated", n)
			}
			delegated++
		}
	}
	if delegated != 1 {
		t.Errorf("%d nodes delegated the shared image; want 1 of 3 with k=2", delegated)
	}
}

func TestPlannerBudgetAndHold(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	p := New(Options{Replicas: 1, Budgets: map[string]float64{"reg:5000": 10}, Now: func() time.Time { return now }})
	// 40 distinct images on one node: 40 HEADs planned, budget 10.
	var ims []*pb.ImageReport
	for i := range 40 {
		ims = append(ims, image(fmt.Sprintf("reg:5000/img-%d:v1", i), pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false))
	}
	p.Ingest("a", node("a", ""), true, ims, nil, func() {})
	d := p.DirectiveSince("a", "")
	if len(d.GetBudgets()) != 1 || d.GetBudgets()[0].GetRequestsPerInterval() != 10 {
		t.Fatalf("budgets %v, want 10 per interval for reg:5000", d.GetBudgets())
	}
	// A 429 with Retry-After holds the registry for every node.
	limited := image("reg:5000/img-0:v1", pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED, false)
	limited.Endpoints[0].HttpStatus = 429
	limited.Endpoints[0].RetryAfter = durationpb.New(90 * time.Second)
	limited.Endpoints[0].RatelimitRemaining = "0;w=21600"
	p.Ingest("a", nil, false, []*pb.ImageReport{limited}, nil, func() {})
	d = p.DirectiveSince("a", "")
	if got := d.GetBudgets()[0].GetHoldUntil().AsTime(); !got.Equal(now.Add(90 * time.Second)) {
		t.Errorf("hold until %v, want %v", got, now.Add(90*time.Second))
	}
	// The plan as sent is not built again until it changes.
	if again := p.DirectiveSince("a", d.GetGeneration()); again != nil {
		t.Errorf("DirectiveSince its own generation = %v, want nil", again)
	}
	now = now.Add(2 * time.Minute) // the hold ends: the plan changes
	if later := p.DirectiveSince("a", d.GetGeneration()); later == nil || later.GetGeneration() == d.GetGeneration() || later.GetBudgets()[0].GetHoldUntil() != nil {
		t.Errorf("after the hold: %v, want a new plan without the hold", later)
	}
	st := p.Stats()
	if v, ok := st.RateLimitRemaining[[2]string{"a", "reg:5000"}]; !ok || v != 0 {
		t.Errorf("ratelimit remaining %v %v", v, ok)
	}
}

func TestBudgetsFlag(t *testing.T) {
	b := Budgets(DefaultBudgets())
	if err := b.Set("ghcr.io=100/interval, docker.io=0,quay.io=5"); err != nil {
		t.Fatal(err)
	}
	if b.String() != "ghcr.io=100/interval,quay.io=5/interval" {
		t.Errorf("got %s", b)
	}
	for _, bad := range []string{"x", "=3", "a=b", "a=-1"} {
		if err := b.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}

// Recomputing the plan when a node joins a 5,000- or 15,000-node cluster
// is cheap: only its own keys are rechosen.
func BenchmarkNodeJoins(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(size.String(), func(b *testing.B) {
			p := size.planner()
			b.ResetTimer()
			for i := range b.N {
				name := fmt.Sprintf("new-%d", i)
				p.Ingest(name, node(name, "z0"), true, size.images(i), nil, func() {})
				_ = p.DirectiveSince(name, "")
				p.Forget(name)
			}
		})
	}
}

// BenchmarkPlannerFill is the planner's part of an aggregator restart:
// every node of the cluster joins with a snapshot, one after another, and
// gets its plan.
func BenchmarkPlannerFill(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(size.String(), func(b *testing.B) {
			for range b.N {
				p := New(Options{Replicas: 2, Budgets: DefaultBudgets()})
				for n := range size.nodes {
					name := fmt.Sprintf("node-%d", n)
					p.Ingest(name, node(name, fmt.Sprintf("z%d", n%3)), true, size.images(n), nil, func() {})
					_ = p.DirectiveSince(name, "")
				}
			}
		})
	}
}

// benchSize is a cluster for the benchmarks: nodes × perNode images,
// distinct of them over distinct/100 registries, in three zones.
type benchSize struct{ nodes, perNode, distinct int }

var benchSizes = []benchSize{{5000, 100, 2000}, {15000, 100, 6000}}

func (s benchSize) String() string { return fmt.Sprintf("%dx%d", s.nodes, s.perNode) }

func (s benchSize) images(n int) []*pb.ImageReport {
	ims := make([]*pb.ImageReport, s.perNode)
	for j := range ims {
		r := (n*37 + j*13) % s.distinct
		reg := fmt.Sprintf("reg-%d:5000", r%max(1, s.distinct/100))
		ims[j] = image(fmt.Sprintf("%s/img-%d:v1", reg, r), pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)
		ims[j].Registry, ims[j].Endpoints[0].Url = reg, "http://"+reg+"/v2"
	}
	return ims
}

var (
	benchMu       sync.Mutex
	benchPlanners = map[benchSize]*Planner{}
)

// planner is the cluster's planner in three zones, built once for the
// benchmarks.
func (s benchSize) planner() *Planner {
	benchMu.Lock()
	defer benchMu.Unlock()
	if p := benchPlanners[s]; p != nil {
		return p
	}
	p := New(Options{Replicas: 2, Budgets: DefaultBudgets()})
	for n := range s.nodes {
		name := fmt.Sprintf("node-%d", n)
		p.Ingest(name, node(name, fmt.Sprintf("z%d", n%3)), true, s.images(n), nil, func() {})
	}
	benchPlanners[s] = p
	return p
}

// BenchmarkPlannerRound is the planner's part of an aggregator restart at
// 15,000 nodes × 100 images and of the round of snapshots after it, as
// pwload sends them: every node joins with a snapshot and gets its plan
// (fill), then sends its snapshot again with its delegated images marked
// (round). It reports the heap the planner keeps per image after a GC and
// the time per image ingested in each phase (building the reports
// included, the same before and after a change).
//
//	cd aggregator && go test -run '^$' -bench PlannerRound -benchtime=1x ./pkg/shard/
func BenchmarkPlannerRound(b *testing.B) {
	size := benchSize{15000, 100, 6000}
	images := float64(size.nodes * size.perNode)
	for range b.N {
		before := heapAlloc()
		p := New(Options{Replicas: 2, Budgets: DefaultBudgets()})
		start := time.Now()
		delegated := make([]map[string]bool, size.nodes)
		for n := range size.nodes {
			name := fmt.Sprintf("node-%d", n)
			p.Ingest(name, node(name, fmt.Sprintf("z%d", n%3)), true, size.images(n), nil, func() {})
			_ = p.DirectiveSince(name, "")
		}
		fill := time.Since(start)
		for n := range size.nodes {
			delegated[n] = map[string]bool{}
			for _, k := range p.DirectiveSince(fmt.Sprintf("node-%d", n), "").GetDelegated() {
				delegated[n][k.KeyString()] = true
			}
		}
		start = time.Now()
		for n := range size.nodes {
			name := fmt.Sprintf("node-%d", n)
			ims := size.images(n)
			for _, im := range ims {
				if delegated[n][pb.ProbeKeyOf(im)] {
					im.Delegated = true
				}
			}
			p.Ingest(name, nil, true, ims, nil, func() {})
			_ = p.DirectiveSince(name, "")
		}
		round := time.Since(start)
		delegated = nil
		after := heapAlloc()
		b.ReportMetric(float64(fill.Nanoseconds())/images, "fill-ns/image")
		b.ReportMetric(float64(round.Nanoseconds())/images, "round-ns/image")
		b.ReportMetric(float64(after-before)/images, "B/image")
		runtime.KeepAlive(p)
	}
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
