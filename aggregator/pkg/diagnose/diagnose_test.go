package diagnose

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

const (
	available   = pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE
	absent      = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
	unauthz     = pullwatchv1.ImageStatus_IMAGE_STATUS_UNAUTHORIZED
	forbidden   = pullwatchv1.ImageStatus_IMAGE_STATUS_FORBIDDEN
	rateLimited = pullwatchv1.ImageStatus_IMAGE_STATUS_RATE_LIMITED
	unreachable = pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE
	platform    = pullwatchv1.ImageStatus_IMAGE_STATUS_PLATFORM_MISSING
	badFormat   = pullwatchv1.ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT
	unknown     = pullwatchv1.ImageStatus_IMAGE_STATUS_UNKNOWN

	upstream = pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM
	mirror   = pullwatchv1.EndpointRole_ENDPOINT_ROLE_MIRROR

	reg       = "registry.example"
	upURL     = "https://registry.example"
	mirrorURL = "https://mirror.example"
)

// The endpoint results the tests combine.
var (
	upOK      = &pullwatchv1.EndpointResult{Url: upURL, Role: upstream, Status: available, HttpStatus: 200, Latency: durationpb.New(20 * time.Millisecond)}
	upAbsent  = &pullwatchv1.EndpointResult{Url: upURL, Role: upstream, Status: absent, HttpStatus: 404}
	upDenied  = &pullwatchv1.EndpointResult{Url: upURL, Role: upstream, Status: unauthz, HttpStatus: 401}
	upDown    = &pullwatchv1.EndpointResult{Url: upURL, Role: upstream, Status: unreachable, Reason: "dial tcp: connection refused", Latency: durationpb.New(2 * time.Second)}
	up503     = &pullwatchv1.EndpointResult{Url: upURL, Role: upstream, Status: unreachable, HttpStatus: 503, Reason: "503 Service Unavailable"}
	mirrorOK  = &pullwatchv1.EndpointResult{Url: mirrorURL, Role: mirror, Status: available, HttpStatus: 200}
	mirrorDwn = &pullwatchv1.EndpointResult{Url: mirrorURL, Role: mirror, Status: unreachable, Reason: "i/o timeout"}
	skipped   = &pullwatchv1.EndpointResult{Url: "https://pull-only.example", Role: mirror, Status: unknown, Skipped: true}
)

func image(ref string, st pullwatchv1.ImageStatus, eps ...*pullwatchv1.EndpointResult) *pullwatchv1.ImageReport {
	return &pullwatchv1.ImageReport{Image: ref, Registry: reg, Status: st, Reason: st.Word(), InUse: true, Endpoints: eps}
}

func node(name, zone string, images ...*pullwatchv1.ImageReport) Node {
	return Node{Name: name, Zone: zone, Images: nodeimage.All(images...)}
}

func stale(n Node) Node        { n.Stale = true; return n }
func unregistered(n Node) Node { n.Unregistered = true; return n }

// healthy is a node that reaches the registry and pulls app:1.
func healthy(name, zone string) Node {
	return node(name, zone, image("registry.example/app:1", available, upOK))
}

// cutOff is a node that cannot reach the registry at all.
func cutOff(name, zone string) Node {
	return node(name, zone, image("registry.example/app:1", unreachable, upDown))
}

type want struct {
	scope   Scope
	failing []string
	zones   []string
}

func TestEndpointScope(t *testing.T) {
	up := EndpointKey{Registry: reg, URL: upURL, Role: "upstream"}
	mir := EndpointKey{Registry: reg, URL: mirrorURL, Role: "mirror"}
	viaMirror := func(name, zone string, m, u *pullwatchv1.EndpointResult) Node {
		st := available
		if !m.Answered() && !u.Answered() {
			st = unreachable
		}
		return node(name, zone, image("registry.example/app:1", st, m, u))
	}
	tests := []struct {
		name  string
		nodes []Node
		key   EndpointKey
		want  want
	}{
		{"healthy", []Node{healthy("a", "z1"), healthy("b", "z2")}, up, want{scope: ScopeNone}},
		{"node: one of three", []Node{healthy("a", "z1"), cutOff("b", "z1"), healthy("c", "z2")}, up,
			want{ScopeNode, []string{"b"}, nil}},
		{"node: two failing in a zone that also has a working node",
			[]Node{cutOff("a", "z1"), cutOff("b", "z1"), healthy("c", "z1"), healthy("d", "z2")}, up,
			want{ScopeNode, []string{"a", "b"}, nil}},
		{"node: failing nodes without a zone", []Node{cutOff("a", ""), cutOff("b", ""), healthy("c", "")}, up,
			want{ScopeNode, []string{"a", "b"}, nil}},
		{"node: a single failing node is never a zone", []Node{cutOff("a", "z1"), healthy("b", "z2")}, up,
			want{ScopeNode, []string{"a"}, nil}},
		{"zone: every node of z1", []Node{cutOff("a", "z1"), cutOff("b", "z1"), healthy("c", "z2"), healthy("d", "z2")}, up,
			want{ScopeZone, []string{"a", "b"}, []string{"z1"}}},
		{"zone: two whole zones", []Node{cutOff("a", "z1"), cutOff("b", "z2"), healthy("c", "z3")}, up,
			want{ScopeZone, []string{"a", "b"}, []string{"z1", "z2"}}},
		{"cluster: every node", []Node{cutOff("a", "z1"), cutOff("b", "z2"), cutOff("c", "z2")}, up,
			want{ScopeCluster, []string{"a", "b", "c"}, nil}},
		{"cluster: a one-node cluster", []Node{cutOff("a", "")}, up, want{ScopeCluster, []string{"a"}, nil}},
		{"node: the only node using a registry in a larger cluster",
			[]Node{cutOff("a", "z1"), node("b", "z1", &pullwatchv1.ImageReport{Image: "other.example/x:1", Registry: "other.example", Status: available,
				Endpoints: []*pullwatchv1.EndpointResult{{Url: "https://other.example", Role: upstream, Status: available, HttpStatus: 200}}})}, up,
			want{ScopeNode, []string{"a"}, nil}},
		{"mirror: down from every node, upstream answers",
			[]Node{viaMirror("a", "z1", mirrorDwn, upOK), viaMirror("b", "z2", mirrorDwn, upOK)}, mir,
			want{ScopeMirror, []string{"a", "b"}, nil}},
		{"mirror: the upstream answers from only some nodes is still a mirror finding",
			[]Node{viaMirror("a", "z1", mirrorDwn, upOK), viaMirror("b", "z2", mirrorDwn, upDown)}, mir,
			want{ScopeMirror, []string{"a", "b"}, nil}},
		{"cluster: mirror and upstream down everywhere",
			[]Node{viaMirror("a", "z1", mirrorDwn, upDown), viaMirror("b", "z2", mirrorDwn, upDown)}, mir,
			want{ScopeCluster, []string{"a", "b"}, nil}},
		{"node: a mirror down from one node only",
			[]Node{viaMirror("a", "z1", mirrorDwn, upOK), viaMirror("b", "z1", mirrorOK, upOK)}, mir,
			want{ScopeNode, []string{"a"}, nil}},
		{"node: upstream cut from one node, the mirror still serves it",
			[]Node{viaMirror("a", "z1", mirrorOK, upDown), viaMirror("b", "z1", mirrorOK, upOK)}, up,
			want{ScopeNode, []string{"a"}, nil}},
		{"answered errors are no endpoint failure",
			[]Node{node("a", "z1", image("registry.example/gone:1", absent, upAbsent)), node("b", "z1", image("registry.example/gone:1", unauthz, upDenied))}, up,
			want{scope: ScopeNone}},
		{"5xx answers count as answered",
			[]Node{node("a", "z1", image("registry.example/app:1", unreachable, up503)), healthy("b", "z1")}, up,
			want{scope: ScopeNone}},
		{"stale nodes do not count as failing", []Node{stale(cutOff("a", "z1")), healthy("b", "z1"), healthy("c", "z2")}, up,
			want{scope: ScopeNone}},
		{"stale nodes do not count as working", []Node{cutOff("a", "z1"), cutOff("b", "z1"), stale(healthy("c", "z2"))}, up,
			want{ScopeCluster, []string{"a", "b"}, nil}},
		{"unregistered (deleted) nodes are dropped", []Node{unregistered(cutOff("a", "z1")), healthy("b", "z1"), healthy("c", "z2")}, up,
			want{scope: ScopeNone}},
		{"a deleted node does not make a node failure a cluster one",
			[]Node{cutOff("a", "z1"), unregistered(cutOff("b", "z1")), healthy("c", "z2")}, up,
			want{ScopeNode, []string{"a"}, nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Diagnose(tt.nodes)
			i := slices.IndexFunc(r.Endpoints, func(f EndpointFinding) bool { return f.EndpointKey == tt.key })
			if i < 0 {
				t.Fatalf("no finding for %+v in %+v", tt.key, r.Endpoints)
			}
			f := r.Endpoints[i]
			got := want{f.Scope, f.Failing, f.Zones}
			if got.scope != tt.want.scope || !slices.Equal(got.failing, tt.want.failing) || !slices.Equal(got.zones, tt.want.zones) {
				t.Errorf("finding = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestImageScope(t *testing.T) {
	const app = "registry.example/app:1"
	other := func(name, zone string) Node {
		// A node without app:1 that reaches the registry with another image.
		return node(name, zone, image("registry.example/other:1", available, upOK))
	}
	tests := []struct {
		name  string
		nodes []Node
		want  want
		worst pullwatchv1.ImageStatus
	}{
		{"available everywhere", []Node{healthy("a", "z1"), healthy("b", "z2")}, want{scope: ScopeNone}, available},
		{"degraded through a mirror is available",
			[]Node{node("a", "z1", image(app, available, mirrorDwn, upOK)), healthy("b", "z2")}, want{scope: ScopeNone}, available},
		{"image: absent everywhere",
			[]Node{node("a", "z1", image(app, absent, upAbsent)), node("b", "z2", image(app, absent, upAbsent))},
			want{ScopeImage, []string{"a", "b"}, nil}, absent},
		{"node: unauthorized on one node (one node's answer alone is no image scope)",
			[]Node{node("a", "z1", image(app, unauthz, upDenied)), healthy("b", "z2")},
			want{ScopeNode, []string{"a"}, nil}, unauthz},
		{"image: unauthorized on two nodes",
			[]Node{node("a", "z1", image(app, unauthz, upDenied)), node("b", "z2", image(app, unauthz, upDenied)), healthy("c", "z2")},
			want{ScopeImage, []string{"a", "b"}, nil}, unauthz},
		{"image: forbidden",
			[]Node{node("a", "z1", image(app, forbidden, upDenied)), node("b", "z1", image(app, forbidden, upDenied))},
			want{ScopeImage, []string{"a", "b"}, nil}, forbidden},
		{"node: platform missing on the one arm64 node",
			[]Node{node("a", "z1", image(app, platform, upOK)), healthy("b", "z1")},
			want{ScopeNode, []string{"a"}, nil}, platform},
		{"image: bad format",
			[]Node{node("a", "z1", image(app, badFormat, upOK))},
			want{ScopeImage, []string{"a"}, nil}, badFormat},
		{"image: absent wins over unreachable elsewhere",
			[]Node{node("a", "z1", image(app, absent, upAbsent)), node("c", "z1", image(app, absent, upAbsent)), cutOff("b", "z2")},
			want{ScopeImage, []string{"a", "b", "c"}, nil}, absent},
		{"cluster: one node's absent and another's unreachable (no image scope from one answer)",
			[]Node{node("a", "z1", image(app, absent, upAbsent)), cutOff("b", "z2")},
			want{ScopeCluster, []string{"a", "b"}, nil}, absent},
		{"node: one node lost the registry", []Node{healthy("a", "z1"), cutOff("b", "z1"), healthy("c", "z2")},
			want{ScopeNode, []string{"b"}, nil}, unreachable},
		{"node: the only node with the image lost the registry, others reach it",
			[]Node{cutOff("a", "z1"), other("b", "z1"), other("c", "z2")},
			want{ScopeNode, []string{"a"}, nil}, unreachable},
		{"zone: the whole zone lost the registry",
			[]Node{cutOff("a", "z1"), cutOff("b", "z1"), healthy("c", "z2"), other("d", "z2")},
			want{ScopeZone, []string{"a", "b"}, []string{"z1"}}, unreachable},
		{"cluster: no node reaches the registry", []Node{cutOff("a", "z1"), cutOff("b", "z2")},
			want{ScopeCluster, []string{"a", "b"}, nil}, unreachable},
		{"cluster: no node reaches the registry, the image on one of them (each node's own pings, not one answer)",
			[]Node{cutOff("a", "z1"), node("b", "z2", image("registry.example/other:1", unreachable, upDown))},
			want{ScopeCluster, []string{"a"}, nil}, unreachable},
		{"zone: the image on one node of the zone that lost the registry",
			[]Node{cutOff("a", "z1"), node("b", "z1", image("registry.example/other:1", unreachable, upDown)), other("c", "z2")},
			want{ScopeZone, []string{"a"}, []string{"z1"}}, unreachable},
		{"cluster: 503 for this image on every node that has it, although the registry answers",
			[]Node{node("a", "z1", image(app, unreachable, up503)), node("b", "z2", image(app, unreachable, up503)), other("c", "z1")},
			want{ScopeCluster, []string{"a", "b"}, nil}, unreachable},
		{"node: rate limited on one node",
			[]Node{node("a", "z1", image(app, rateLimited, &pullwatchv1.EndpointResult{Url: upURL, Role: upstream, Status: rateLimited, HttpStatus: 429})), healthy("b", "z1")},
			want{ScopeNode, []string{"a"}, nil}, rateLimited},
		{"stale nodes do not count as failing",
			[]Node{stale(cutOff("a", "z1")), healthy("b", "z1")}, want{scope: ScopeNone}, available},
		{"deleted nodes are dropped",
			[]Node{unregistered(node("a", "z1", image(app, absent, upAbsent))), healthy("b", "z1")}, want{scope: ScopeNone}, available},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Diagnose(tt.nodes)
			i := slices.IndexFunc(r.Images, func(f ImageFinding) bool { return f.Image == app })
			if i < 0 {
				t.Fatalf("no finding for %s in %+v", app, r.Images)
			}
			f := r.Images[i]
			got := want{f.Scope, f.Failing, f.Zones}
			if got.scope != tt.want.scope || !slices.Equal(got.failing, tt.want.failing) || !slices.Equal(got.zones, tt.want.zones) {
				t.Errorf("finding = %+v, want %+v", got, tt.want)
			}
			if f.Worst != tt.worst {
				t.Errorf("worst = %s, want %s", f.Worst.Word(), tt.worst.Word())
			}
		})
	}
}

// One node's answer, folded into the nodes that delegated the key to it
// (probe sharding: shared_from names it), is one node's answer however
// many nodes show it: it makes no image or cluster scope by itself.
func TestImageScopeCountsAnswersNotCopies(t *testing.T) {
	const app = "registry.example/app:1"
	shared := func(name, from string, st pullwatchv1.ImageStatus, ep *pullwatchv1.EndpointResult) Node {
		im := image(app, st, ep)
		im.SharedFrom = from
		return node(name, "", im)
	}
	tests := []struct {
		name  string
		nodes []Node
		want  Scope
	}{
		{"one prober's absent in four nodes", []Node{
			node("p", "", image(app, absent, upAbsent)),
			shared("a", "p", absent, upAbsent), shared("b", "p", absent, upAbsent), shared("c", "p", absent, upAbsent),
		}, ScopeNode},
		{"one prober's 503 in three nodes", []Node{
			node("p", "", image(app, unreachable, up503)),
			shared("a", "p", unreachable, up503), shared("b", "p", unreachable, up503),
		}, ScopeNode},
		{"two probers' absent", []Node{
			node("p", "", image(app, absent, upAbsent)), node("q", "", image(app, absent, upAbsent)),
			shared("a", "p", absent, upAbsent), shared("b", "q", absent, upAbsent),
		}, ScopeImage},
		{"two probers' 503 in three nodes", []Node{
			node("p", "", image(app, unreachable, up503)), node("q", "", image(app, unreachable, up503)),
			shared("a", "p", unreachable, up503),
		}, ScopeCluster},
		{"an outage: every node's own unreachable", []Node{
			node("p", "", image(app, unreachable, upDown)), node("q", "", image(app, unreachable, upDown)),
			node("a", "", image(app, unreachable, upDown)),
		}, ScopeCluster},
		{"the only node's own absent", []Node{node("p", "", image(app, absent, upAbsent))}, ScopeImage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Diagnose(tt.nodes)
			f := r.Images[slices.IndexFunc(r.Images, func(f ImageFinding) bool { return f.Image == app })]
			if f.Scope != tt.want {
				t.Errorf("scope %q, want %q", f.Scope, tt.want)
			}
		})
	}
}

func TestImageCountsOnlyLiveNodes(t *testing.T) {
	const app = "registry.example/app:1"
	r := Diagnose([]Node{
		healthy("a", ""), cutOff("b", ""), stale(cutOff("c", "")), unregistered(healthy("d", "")),
		node("e", "", image(app, absent, upAbsent)),
	})
	if r.Live != 3 {
		t.Errorf("Live = %d, want 3", r.Live)
	}
	f := r.Images[slices.IndexFunc(r.Images, func(f ImageFinding) bool { return f.Image == app })]
	want := map[pullwatchv1.ImageStatus]int{available: 1, unreachable: 1, absent: 1}
	for _, st := range pullwatchv1.Statuses() {
		if f.Counts[st] != want[st] {
			t.Errorf("Counts[%s] = %d, want %d", st.Word(), f.Counts[st], want[st])
		}
	}
}

func TestNodeEndpoints(t *testing.T) {
	r := Diagnose([]Node{
		node("a", "", image("registry.example/app:1", available, mirrorDwn, upOK, skipped), image("registry.example/b:1", absent, mirrorDwn, upAbsent)),
		stale(cutOff("b", "")),
	})
	want := [][]NodeEndpoint{
		{
			{EndpointKey: EndpointKey{reg, mirrorURL, "mirror"}, Up: false, Reason: "i/o timeout"},
			{EndpointKey: EndpointKey{reg, upURL, "upstream"}, Up: true, MaxLatency: 0.02, HasLatency: true},
		},
		{{EndpointKey: EndpointKey{reg, upURL, "upstream"}, Up: false, MaxLatency: 2, HasLatency: true, Reason: "dial tcp: connection refused"}},
	}
	for i := range want {
		if !slices.Equal(r.NodeEndpoints[i], want[i]) {
			t.Errorf("node %s endpoints = %+v, want %+v", r.Nodes[i].Name, r.NodeEndpoints[i], want[i])
		}
	}
}

// A node's own checks are kept shared between nodes with the latencies
// beside them (nodeimage.Table): each node's endpoint latency is its own.
func TestNodeEndpointLatencyOfSharedChecks(t *testing.T) {
	tb := nodeimage.NewTable()
	kept := func(name string, latency time.Duration) Node {
		ep := proto.CloneOf(upOK)
		ep.Latency = durationpb.New(latency)
		return Node{Name: name, Images: []nodeimage.Image{
			tb.Keep(&pullwatchv1.ImageReport{Image: "registry.example/app:1", Registry: reg, Status: available, Endpoints: []*pullwatchv1.EndpointResult{ep}})}}
	}
	a, b := kept("a", 30*time.Millisecond), kept("b", 70*time.Millisecond)
	if a.Images[0].ImageReport != b.Images[0].ImageReport {
		t.Fatal("the two nodes' checks are not shared")
	}
	r := Diagnose([]Node{a, b})
	for i, want := range []float64{0.03, 0.07} {
		if got := r.NodeEndpoints[i]; len(got) != 1 || !got[0].HasLatency || got[0].MaxLatency != want {
			t.Errorf("node %s endpoints = %+v, want latency %v", r.Nodes[i].Name, got, want)
		}
	}
}

func TestNodeState(t *testing.T) {
	for _, tt := range []struct {
		n    Node
		want NodeState
		live bool
	}{
		{healthy("a", ""), NodeFresh, true},
		{stale(healthy("a", "")), NodeStale, false},
		{unregistered(healthy("a", "")), NodeUnregistered, false},
		{unregistered(stale(healthy("a", ""))), NodeUnregistered, false},
	} {
		if got := tt.n.State(); got != tt.want || tt.n.Live() != tt.live {
			t.Errorf("stale=%v unregistered=%v: state %s live %v, want %s %v", tt.n.Stale, tt.n.Unregistered, got, tt.n.Live(), tt.want, tt.live)
		}
	}
}

// BenchmarkDiagnose: 1,000 nodes in 3 zones with 50 images each, two
// endpoints per image (a mirror down everywhere, an upstream that answers),
// one node cut off from the registry; the reports kept as the store keeps
// them (one copy of equal ones, nodeimage.Table), or each node's its own.
// And at 15,000 nodes × 100 images (of 6,000, over 60 registries), kept:
// issue 21's scale, where the reports no longer fit in the CPU's caches.
// Reproduce with:
//
//	cd aggregator && go test -run '^$' -bench BenchmarkDiagnose -benchmem ./pkg/diagnose
func BenchmarkDiagnose(b *testing.B) {
	for _, c := range []struct {
		name                          string
		nodes, images, distinct, regs int
		kept                          bool
	}{
		{"kept", 1000, 50, 50, 1, true},
		{"unshared", 1000, 50, 50, 1, false},
		{"15000x100", 15000, 100, 6000, 60, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			tb := nodeimage.NewTable()
			nodes := make([]Node, c.nodes)
			for n := range nodes {
				images := make([]*pullwatchv1.ImageReport, c.images)
				for i := range images {
					idx := (n*7 + i*131) % c.distinct
					if c.distinct == c.images {
						idx = i
					}
					st, up := available, upOK
					if n == 7 {
						st, up = unreachable, upDown
					}
					images[i] = image(fmt.Sprintf("registry.example/team-%d/app:%d", idx%10, idx), st, proto.CloneOf(mirrorDwn), proto.CloneOf(up))
					images[i].Registry = fmt.Sprintf("reg-%d.example", idx%c.regs)
				}
				nodes[n] = node(fmt.Sprintf("node-%05d", n), fmt.Sprintf("zone-%d", n%3), images...)
				if c.kept {
					for i, im := range nodes[n].Images {
						nodes[n].Images[i] = tb.Keep(im.ImageReport)
					}
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				r := Diagnose(nodes)
				if len(r.Images) != c.distinct || r.Live != c.nodes {
					b.Fatalf("unexpected report: %d images, %d live", len(r.Images), r.Live)
				}
			}
		})
	}
}

// TestSharedReportsDiagnoseAsCopies: the diagnosis reads a report shared
// by many nodes once (aggregation.views); its findings are those of the
// same nodes each holding a copy of its own, for a mix of statuses,
// mirrors, skipped endpoints, zones, stale nodes, and latencies of the
// node's own or of the report.
func TestSharedReportsDiagnoseAsCopies(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	eps := [][]*pullwatchv1.EndpointResult{{upOK}, {upAbsent}, {upDenied}, {upDown}, {up503}, {mirrorOK, upOK}, {mirrorDwn, upOK},
		{mirrorDwn, upDown}, {skipped, upOK}, {mirrorDwn, upAbsent}}
	statuses := []pullwatchv1.ImageStatus{available, absent, unauthz, forbidden, rateLimited, unreachable, platform, badFormat, unknown}
	var pool []*pullwatchv1.ImageReport
	for i := range 40 {
		im := image(fmt.Sprintf("registry.example/app:%d", i%12), statuses[rng.IntN(len(statuses))], eps[rng.IntN(len(eps))]...)
		if i%5 == 0 {
			im.Registry = "other.example"
		}
		if i%3 == 0 {
			im.SharedFrom = fmt.Sprintf("node-%d", i%4)
		}
		pool = append(pool, im)
	}
	shared := make([]Node, 30)
	for n := range shared {
		var ims []nodeimage.Image
		seen := map[string]bool{}
		for range 8 {
			im := pool[rng.IntN(len(pool))]
			if seen[im.GetImage()] {
				continue
			}
			seen[im.GetImage()] = true
			lat := make([]time.Duration, len(im.GetEndpoints()))
			for e := range lat {
				lat[e] = time.Duration(rng.IntN(3)-1) * time.Millisecond // -1: none measured
			}
			if rng.IntN(3) == 0 {
				lat = nil // a shared result's: the report's own latencies
			}
			ims = append(ims, nodeimage.Image{ImageReport: im, Latencies: lat})
		}
		slices.SortFunc(ims, func(a, b nodeimage.Image) int { return strings.Compare(a.GetImage(), b.GetImage()) })
		shared[n] = Node{Name: fmt.Sprintf("node-%02d", n), Zone: fmt.Sprintf("zone-%d", n%3), Images: ims, Stale: n%7 == 6}
	}
	copies := make([]Node, len(shared))
	for n, sn := range shared {
		copies[n] = sn
		copies[n].Images = make([]nodeimage.Image, len(sn.Images))
		for i, im := range sn.Images {
			copies[n].Images[i] = nodeimage.Image{ImageReport: proto.CloneOf(im.ImageReport), Latencies: im.Latencies}
		}
	}
	want := Diagnose(copies)
	// All views kept, a few, none (each made in the scratch one).
	for _, views := range []int{maxViews, 5, 0} {
		t.Run(fmt.Sprintf("views=%d", views), func(t *testing.T) { sameDiagnosis(t, diagnose(shared, views), want) })
	}
}

func sameDiagnosis(t *testing.T, got, want *Report) {
	t.Helper()
	if !reflect.DeepEqual(got.NodeEndpoints, want.NodeEndpoints) {
		t.Errorf("node endpoints of shared reports:\n%+v\nof copies:\n%+v", got.NodeEndpoints, want.NodeEndpoints)
	}
	if !reflect.DeepEqual(got.Endpoints, want.Endpoints) || !reflect.DeepEqual(got.Images, want.Images) ||
		!reflect.DeepEqual(got.Registries, want.Registries) || got.Live != want.Live {
		t.Errorf("findings of shared reports:\n%+v\n%+v\n%+v\nof copies:\n%+v\n%+v\n%+v",
			got.Endpoints, got.Images, got.Registries, want.Endpoints, want.Images, want.Registries)
	}
	scoped := 0
	for _, f := range got.Images {
		if f.Scope != ScopeNone {
			scoped++
		}
	}
	if scoped == 0 || len(got.Endpoints) < 3 || len(got.Registries) != 2 {
		t.Fatalf("the mix found %d failing images, %d endpoints, %d registries: it tests too little", scoped, len(got.Endpoints), len(got.Registries))
	}
}

func TestRegistryScope(t *testing.T) {
	tests := []struct {
		name  string
		nodes []Node
		want  want
	}{
		{"reached everywhere", []Node{healthy("a", "z1"), healthy("b", "z2")}, want{scope: ScopeNone}},
		{"one node lost it", []Node{healthy("a", "z1"), cutOff("b", "z1"), healthy("c", "z2")}, want{ScopeNode, []string{"b"}, nil}},
		{"a zone lost it", []Node{cutOff("a", "z1"), cutOff("b", "z1"), healthy("c", "z2")}, want{ScopeZone, []string{"a", "b"}, []string{"z1"}}},
		{"every node lost it", []Node{cutOff("a", "z1"), cutOff("b", "z2")}, want{ScopeCluster, []string{"a", "b"}, nil}},
		{"a mirror down is not the registry lost", []Node{node("a", "z1", image("registry.example/app:1", available, mirrorDwn, upOK)), healthy("b", "z2")},
			want{scope: ScopeNone}},
		{"stale nodes do not count", []Node{stale(cutOff("a", "z1")), healthy("b", "z1")}, want{scope: ScopeNone}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Diagnose(tt.nodes)
			if len(r.Registries) != 1 || r.Registries[0].Registry != "registry.example" {
				t.Fatalf("registries = %+v, want one for registry.example", r.Registries)
			}
			f := r.Registries[0]
			var failing []string
			for _, i := range f.Failing {
				failing = append(failing, r.Nodes[i].Name)
			}
			got := want{f.Scope, failing, f.Zones}
			if got.scope != tt.want.scope || !slices.Equal(got.failing, tt.want.failing) || !slices.Equal(got.zones, tt.want.zones) {
				t.Errorf("finding = %+v, want %+v", got, tt.want)
			}
		})
	}
}
