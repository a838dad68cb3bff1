// Package diagnose decides, from every node's latest results, where a pull
// failure lies: on one node, in one zone, at a mirror, for the whole
// cluster, or with the image itself.
//
// Diagnose is a pure function of its input (package analyzer feeds it
// from the state store and the Kubernetes API and logs each change). What
// a status means (its rank, whether the registry stated it) is the
// pullwatch.v1 vocabulary's.
//
// Only live nodes count: a stale node (its agent went silent) or an
// unregistered one (the Kubernetes API has no Node of that name, for
// example because it was deleted) is neither failing nor working. Their
// per-node results are still in the report, for per-node metrics.
package diagnose

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Scope says where a failure lies. The words are the "scope" label of
// pullwatch_registry_failure and pullwatch_image_failure.
type Scope string

// The scopes. ScopeNone means nothing fails.
const (
	ScopeNone = Scope("")
	// ScopeNode: fails from some nodes while others reach it (that
	// node's egress, DNS, proxy, firewall or credentials).
	ScopeNode = Scope("node")
	// ScopeZone: fails from every node of one or more zones and works
	// from nodes elsewhere.
	ScopeZone = Scope("zone")
	// ScopeMirror: a mirror endpoint fails from every node that tries it
	// while its upstream answers them; images stay available, degraded.
	ScopeMirror = Scope("mirror")
	// ScopeCluster: fails from every node (registry outage, or egress
	// all nodes share).
	ScopeCluster = Scope("cluster")
	// ScopeImage: the registry answers, but about this image it says
	// absent, unauthorized, forbidden, platform_missing or
	// bad_image_format.
	ScopeImage = Scope("image")
)

// Scopes lists every scope but ScopeNone.
func Scopes() []Scope {
	return []Scope{ScopeNode, ScopeZone, ScopeMirror, ScopeCluster, ScopeImage}
}

// ZoneLabel is the well-known Node label the zone comes from.
const ZoneLabel = "topology.kubernetes.io/zone"

// Node is one node's input to Diagnose.
type Node struct {
	Name string
	// Zone is the node's topology.kubernetes.io/zone; empty if unknown.
	Zone string
	// Stale is true when the node's agent has not reported for longer
	// than --stale-after.
	Stale bool
	// Unregistered is true when the Kubernetes API has loaded its nodes
	// and has none of this name (deleted, or an agent with a wrong
	// NODE_NAME). Always false without the API.
	Unregistered bool
	// Images are the node's latest results, ordered by reference.
	// Shared with the state store: never modified.
	Images []nodeimage.Image
	// Info and LastReport are carried for the report's readers (metrics,
	// status page); Diagnose does not look at them.
	Info       *pullwatchv1.Node
	LastReport time.Time
}

// Live reports whether the node counts in cluster-wide findings.
func (n *Node) Live() bool { return n.State() == NodeFresh }

// NodeState is how the aggregator regards a node. The words are the
// "state" label of pullwatch_nodes and what the status page shows.
type NodeState string

// The node states.
const (
	// NodeFresh: reported within --stale-after and, with the Kubernetes
	// API, known to it. Only fresh nodes are live.
	NodeFresh = NodeState("fresh")
	// NodeStale: its agent has not reported for longer than --stale-after.
	NodeStale = NodeState("stale")
	// NodeUnregistered: the Kubernetes API has no Node of that name.
	NodeUnregistered = NodeState("unregistered")
)

// NodeStates lists every node state, in the order metrics export them.
func NodeStates() []NodeState { return []NodeState{NodeFresh, NodeStale, NodeUnregistered} }

// State classifies the node; unregistered wins over stale.
func (n *Node) State() NodeState {
	switch {
	case n.Unregistered:
		return NodeUnregistered
	case n.Stale:
		return NodeStale
	}
	return NodeFresh
}

// EndpointKey names a registry endpoint as the metrics do.
type EndpointKey struct {
	// Registry is the registry host the images name (docker.io); a
	// mirror serving several registries has one key per registry.
	Registry string
	// URL is the endpoint's base URL.
	URL string
	// Role is "upstream" or "mirror".
	Role string
}

func (k EndpointKey) compare(o EndpointKey) int {
	return cmp.Or(strings.Compare(k.Registry, o.Registry), strings.Compare(k.URL, o.URL), strings.Compare(k.Role, o.Role))
}

// NodeEndpoint is what one node saw of one endpoint across its images.
type NodeEndpoint struct {
	EndpointKey
	// Up is true when the endpoint answered (any HTTP response) for at
	// least one image. Endpoints the runtime skips for every image are
	// not listed at all.
	Up bool
	// MaxLatency is the highest probe latency in seconds; HasLatency is
	// false when no result carried one.
	MaxLatency float64
	HasLatency bool
	// Reason is the reason of the first result that did not answer,
	// when none did.
	Reason string
}

// EndpointFinding is the diagnosis of one registry endpoint.
type EndpointFinding struct {
	EndpointKey
	Scope Scope
	// Nodes is how many live nodes tried the endpoint.
	Nodes int
	// Failing are the live nodes from which it never answered, by name.
	Failing []string
	// Zones are the zones that fail as a whole (ScopeZone only).
	Zones []string
	// Reason is one failing node's reason.
	Reason string
}

// ImageFinding is the diagnosis of one image across live nodes.
type ImageFinding struct {
	Image    string
	Registry string
	Scope    Scope
	// Counts is the number of live nodes per status, indexed by the
	// ImageStatus value.
	Counts [statusSlots]int
	// Failing are the live nodes where the image is not available, by name.
	Failing []string
	// Zones are the zones that fail as a whole (ScopeZone only).
	Zones []string
	// Worst is the worst status on any live node (see ImageStatus.Rank), and Reason
	// the reason given with it on the first such node.
	Worst  pullwatchv1.ImageStatus
	Reason string
	// InUse is true when a container uses the image on a live node.
	InUse bool
}

// RegistryFinding is the diagnosis of a registry's reachability: the
// live nodes from which no endpoint of the registry answered any image.
type RegistryFinding struct {
	Registry string
	// Scope is ScopeNode, ScopeZone or ScopeCluster; ScopeNone when every
	// live node that uses the registry reaches it.
	Scope Scope
	// Nodes is how many live nodes have results for the registry.
	Nodes int
	// Failing are the live nodes that lost the registry, as indexes
	// into Report.Nodes, in node order.
	Failing []int
	// Zones are the zones that lost it as a whole (ScopeZone only).
	Zones []string
}

// statusSlots is one more than the highest ImageStatus value this build
// knows, so that Counts can be indexed by status.
const statusSlots = int(pullwatchv1.ImageStatus_IMAGE_STATUS_UNKNOWN) + 1

// Report is the outcome of Diagnose.
type Report struct {
	// Nodes is the input, in the order given.
	Nodes []Node
	// NodeEndpoints[i] is what Nodes[i] saw of each endpoint, ordered
	// by key. It covers every node, live or not.
	NodeEndpoints [][]NodeEndpoint
	// Endpoints has one finding per endpoint some live node tried,
	// ordered by key, healthy ones (ScopeNone) included.
	Endpoints []EndpointFinding
	// Images has one finding per image on a live node, ordered by
	// reference, healthy ones included.
	Images []ImageFinding
	// Registries has one finding per registry some live node has
	// results for, ordered by host, healthy ones (ScopeNone) included.
	Registries []RegistryFinding
	// Live is the number of live nodes.
	Live int
}

// endpointAgg accumulates one endpoint over live nodes.
type endpointAgg struct {
	tried   []int // node indexes
	failing []int
	// upstreamUp counts failing nodes from which an upstream endpoint of
	// the same registry answered.
	upstreamUp int
	reason     string
}

// imageAgg accumulates one image over live nodes.
type imageAgg struct {
	f       *ImageFinding
	nodes   []int
	failing []int
	// stated are the nodes whose answer a failure the registry stated
	// (absent, unauthorized, ...) is, and answerers those of any failure:
	// a node's own check, or the prober a shared result came from
	// (shared_from). One node's answer folded into many nodes is still
	// one node's.
	stated, answerers map[string]bool
	// regUp is true when a failing node reached the image's registry.
	regUp bool
}

// registryAgg is a registry's reachability over live nodes.
type registryAgg struct {
	nodes []int // live nodes with results for the registry
	down  []int // of those, nodes from which no endpoint answered
}

// nodeRegistry is one node's view of one registry.
type nodeRegistry struct {
	answered, upstreamAnswered bool
}

// Diagnose computes the findings for nodes. It does not modify them.
func Diagnose(nodes []Node) *Report { return diagnose(nodes, maxViews) }

// diagnose is Diagnose with at most maxViews reports' views kept.
func diagnose(nodes []Node, maxViews int) *Report {
	r := &Report{Nodes: nodes, NodeEndpoints: make([][]NodeEndpoint, len(nodes))}
	for i := range nodes {
		if nodes[i].Live() {
			r.Live++
		}
	}
	a := &aggregation{
		endpoints:  map[EndpointKey]*endpointAgg{},
		images:     map[string]*imageAgg{},
		registries: map[string]*registryAgg{},
		views:      map[*pullwatchv1.ImageReport]*reportView{},
		regNums:    numbering[string, registryAgg, regSlot]{ids: map[string]int32{}},
		epNums:     numbering[EndpointKey, endpointAgg, epSlot]{ids: map[EndpointKey]int32{}},
		maxViews:   maxViews,
	}
	for i := range nodes {
		r.NodeEndpoints[i] = a.scan(i, &nodes[i])
	}
	r.Endpoints = a.endpointFindings(nodes, r.Live)
	r.Images = a.imageFindings(nodes, r.Live)
	r.Registries = a.registryFindings(nodes, r.Live)
	return r
}

// aggregation accumulates the findings over the nodes.
type aggregation struct {
	endpoints  map[EndpointKey]*endpointAgg
	images     map[string]*imageAgg
	registries map[string]*registryAgg
	// views are the reports scanned so far, read once each: the store
	// keeps one copy of equal reports (nodeimage.Table), so at 15,000
	// nodes × 100 images a few thousand reports stand for 1.5 million
	// images, and a look by pointer replaces, for each image, looks by
	// registry, endpoint and reference in maps keyed by strings (hashing
	// and comparing those strings was most of a diagnosis).
	views    map[*pullwatchv1.ImageReport]*reportView
	maxViews int
	// Registries and endpoints, numbered as views meet them. Their
	// slots are the node being scanned's view of each registry and its
	// endpoints' indexes in eps, valid where the slot's gen is the
	// node's (gen counts the nodes scanned, so nothing is cleared
	// between nodes); touched are the registries it has results for.
	regNums numbering[string, registryAgg, regSlot]
	epNums  numbering[EndpointKey, endpointAgg, epSlot]
	gen     uint32
	touched []int32
	// eps is scan's scratch: a node's endpoints are gathered here and
	// copied out once, at their size (grown by append for each of 15,000
	// nodes, they were a tenth of what the aggregator allocates); epOf
	// numbers them.
	eps     []NodeEndpoint
	epOf    []int32
	failing []failingImage
	scratch reportView
}

// failingImage is an image of the node being scanned that is not
// available: its registry's number and its image's aggregate.
type failingImage struct {
	reg int32
	agg *imageAgg
}

type regSlot struct {
	gen uint32
	nodeRegistry
}

type epSlot struct {
	gen uint32
	j   int32
}

// reportView is what scan reads of one report, the same on every node
// that holds it.
type reportView struct {
	reg int32 // a registry's number
	eps []endpointView
	// The report's status and whether a container uses the image: what
	// scan reads of every image (the report itself is a cache miss or
	// more away).
	status pullwatchv1.ImageStatus
	inUse  bool
	// agg is the image's aggregate, once a live node had the report.
	agg *imageAgg
}

// endpointView is one endpoint of a report.
type endpointView struct {
	ep                 int32 // an endpoint's number; -1 when the runtime skipped it
	answered, upstream bool
	// reason is what a node that never reached the endpoint says of it.
	reason string
	// latency is the report's own (hasLatency false: none): a node's
	// image with latencies of its own (nodeimage.Image.Latencies) has
	// them instead.
	latency    time.Duration
	hasLatency bool
}

// maxViews bounds aggregation.views: reports nobody shares (a newer
// agent's, with fields the store cannot key) would otherwise each get a
// view, 1.5 million at 15,000 nodes. Past it, a report's view is made in
// a scratch one, valid until the next.
const maxViews = 1 << 16

// view is im's reportView, made the first time im is met.
func (a *aggregation) view(im *pullwatchv1.ImageReport) *reportView {
	if v, ok := a.views[im]; ok {
		return v
	}
	v := &a.scratch
	if len(a.views) < a.maxViews {
		v = &reportView{}
		a.views[im] = v
	}
	*v = reportView{reg: a.regNums.of(im.GetRegistry()), status: im.GetStatus(), inUse: im.GetInUse(),
		eps: slices.Grow(v.eps[:0], len(im.GetEndpoints()))}
	for e, ep := range im.GetEndpoints() {
		ev := endpointView{ep: -1}
		if !ep.GetSkipped() {
			ev = endpointView{
				ep:       a.epNums.of(EndpointKey{Registry: im.GetRegistry(), URL: ep.GetUrl(), Role: ep.GetRole().Word()}),
				answered: ep.Answered(),
				upstream: ep.GetRole() == pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM,
				reason:   cmp.Or(ep.GetReason(), ep.GetStatus().Word()),
			}
			ev.latency, ev.hasLatency = nodeimage.Image{ImageReport: im}.EndpointLatency(e)
		}
		v.eps = append(v.eps, ev)
	}
	return v
}

// numbering numbers the registries or endpoints (K) as the views meet
// them; by number, each one's key, its aggregate (A, once a live node
// has it) and the scanned node's slot (S).
type numbering[K comparable, A, S any] struct {
	ids  map[K]int32
	keys []K
	aggs []*A
	seen []S
}

// of is k's number.
func (n *numbering[K, A, S]) of(k K) int32 {
	id, ok := n.ids[k]
	if !ok {
		id = int32(len(n.keys))
		n.ids[k] = id
		n.keys = append(n.keys, k)
		n.aggs = append(n.aggs, nil)
		n.seen = append(n.seen, *new(S))
	}
	return id
}

// scan returns what node i saw of each endpoint, ordered by key; a live
// node is counted in the endpoint, registry and image aggregates.
func (a *aggregation) scan(i int, n *Node) []NodeEndpoint {
	a.gen++
	live := n.Live()
	touched, eps, epOf, failing := a.touched[:0], a.eps[:0], a.epOf[:0], a.failing[:0]
	for _, im := range n.Images {
		v := a.view(im.ImageReport)
		reg := &a.regNums.seen[v.reg]
		if reg.gen != a.gen {
			*reg = regSlot{gen: a.gen}
			touched = append(touched, v.reg)
		}
		for e, ev := range v.eps {
			if ev.ep < 0 {
				continue
			}
			slot := &a.epNums.seen[ev.ep]
			if slot.gen != a.gen {
				*slot = epSlot{gen: a.gen, j: int32(len(eps))}
				eps = append(eps, NodeEndpoint{EndpointKey: a.epNums.keys[ev.ep]})
				epOf = append(epOf, ev.ep)
			}
			ne := &eps[slot.j]
			if ev.answered {
				ne.Up = true
				reg.answered = true
				if ev.upstream {
					reg.upstreamAnswered = true
				}
			} else if ne.Reason == "" {
				ne.Reason = ev.reason
			}
			l, ok := ev.latency, ev.hasLatency
			if im.Latencies != nil {
				l, ok = im.EndpointLatency(e)
			}
			if ok {
				ne.MaxLatency = max(ne.MaxLatency, l.Seconds())
				ne.HasLatency = true
			}
		}
		if live {
			a.addImage(v, i, n, im)
			if v.status != pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE {
				failing = append(failing, failingImage{v.reg, v.agg})
			}
		}
	}
	if live {
		a.addLive(i, eps, epOf, touched, failing)
	}
	clear(failing)
	a.touched, a.eps, a.epOf, a.failing = touched[:0], eps[:0], epOf[:0], failing[:0]
	if len(eps) == 0 {
		return nil
	}
	out := slices.Clone(eps)
	slices.SortFunc(out, func(x, y NodeEndpoint) int { return x.compare(y.EndpointKey) })
	return out
}

// addLive counts live node i, just scanned, in the endpoint and registry
// aggregates: eps are its endpoints, epOf their numbers, touched the
// registries it has results for, failing its images that are not
// available.
func (a *aggregation) addLive(i int, eps []NodeEndpoint, epOf, touched []int32, failing []failingImage) {
	for j, ne := range eps {
		agg := a.epNums.aggs[epOf[j]]
		if agg == nil {
			agg = &endpointAgg{}
			a.epNums.aggs[epOf[j]] = agg
			a.endpoints[ne.EndpointKey] = agg
		}
		agg.tried = append(agg.tried, i)
		if !ne.Up {
			agg.failing = append(agg.failing, i)
			if a.regNums.seen[a.regNums.ids[ne.Registry]].upstreamAnswered {
				agg.upstreamUp++
			}
			if agg.reason == "" {
				agg.reason = ne.Reason
			}
		}
	}
	for _, r := range touched {
		ra := a.regNums.aggs[r]
		if ra == nil {
			ra = &registryAgg{}
			a.regNums.aggs[r] = ra
			a.registries[a.regNums.keys[r]] = ra
		}
		ra.nodes = append(ra.nodes, i)
		if !a.regNums.seen[r].answered {
			ra.down = append(ra.down, i)
		}
	}
	// A failing image whose node still reached the registry fails
	// for a reason of its own, not the registry's reachability.
	for _, f := range failing {
		if a.regNums.seen[f.reg].answered {
			f.agg.regUp = true
		}
	}
}

func (a *aggregation) endpointFindings(nodes []Node, live int) []EndpointFinding {
	out := make([]EndpointFinding, 0, len(a.endpoints))
	for key, agg := range a.endpoints {
		f := EndpointFinding{EndpointKey: key, Nodes: len(agg.tried), Reason: agg.reason}
		f.Scope, f.Zones = spread(nodes, agg.failing, agg.tried, live)
		if f.Scope == ScopeCluster && key.Role == roleMirror && agg.upstreamUp > 0 {
			f.Scope = ScopeMirror
		}
		f.Failing = names(nodes, agg.failing)
		out = append(out, f)
	}
	slices.SortFunc(out, func(x, y EndpointFinding) int { return x.compare(y.EndpointKey) })
	return out
}

func (a *aggregation) imageFindings(nodes []Node, live int) []ImageFinding {
	out := make([]ImageFinding, 0, len(a.images))
	for _, agg := range a.images {
		f := agg.f
		switch {
		case len(agg.failing) == 0:
		case len(agg.stated) >= 2 || (len(agg.stated) == 1 && live <= 1):
			// The registry said so to two nodes (or to the only one).
			f.Scope = ScopeImage
		case !agg.regUp && a.registries[f.Registry] != nil:
			// Every failing node lost the registry as a whole: the scope
			// is that of the registry's reachability, which every node
			// states for itself (an unreachable check is never shared) and
			// spread never widens from one node alone. An image only one
			// node has is down with the registry in a whole-registry
			// outage, not that node's own failure.
			ra := a.registries[f.Registry]
			f.Scope, f.Zones = spread(nodes, ra.down, ra.nodes, live)
		case len(agg.answerers) < 2 && live > 1:
			// One node's answer, however many nodes show it, says nothing
			// beyond that node: no node can make a failure cluster- or
			// image-wide by itself.
			f.Scope = ScopeNode
		default:
			f.Scope, f.Zones = spread(nodes, agg.failing, agg.nodes, live)
		}
		f.Failing = names(nodes, agg.failing)
		out = append(out, *f)
	}
	slices.SortFunc(out, func(x, y ImageFinding) int { return strings.Compare(x.Image, y.Image) })
	return out
}

func (a *aggregation) registryFindings(nodes []Node, live int) []RegistryFinding {
	out := make([]RegistryFinding, 0, len(a.registries))
	for name, ra := range a.registries {
		f := RegistryFinding{Registry: name, Nodes: len(ra.nodes), Failing: ra.down}
		f.Scope, f.Zones = spread(nodes, ra.down, ra.nodes, live)
		out = append(out, f)
	}
	slices.SortFunc(out, func(x, y RegistryFinding) int { return strings.Compare(x.Registry, y.Registry) })
	return out
}

// roleMirror is the word of a mirror endpoint's role in EndpointKey.
var roleMirror = pullwatchv1.EndpointRole_ENDPOINT_ROLE_MIRROR.Word()

// addImage counts im, of live node i, in its image's aggregate; v is
// im's view.
func (a *aggregation) addImage(v *reportView, i int, n *Node, im nodeimage.Image) {
	agg := v.agg
	if agg == nil {
		if agg = a.images[im.GetImage()]; agg == nil {
			agg = &imageAgg{f: &ImageFinding{Image: im.GetImage(), Registry: im.GetRegistry(), Worst: im.GetStatus(), Reason: im.GetReason()},
				stated: map[string]bool{}, answerers: map[string]bool{}}
			a.images[im.GetImage()] = agg
		}
		v.agg = agg
	}
	f := agg.f
	st := v.status
	if int(st) >= 0 && int(st) < statusSlots {
		f.Counts[st]++
	}
	if st.Worse(f.Worst) {
		f.Worst, f.Reason = st, im.GetReason()
	}
	f.InUse = f.InUse || v.inUse
	agg.nodes = append(agg.nodes, i)
	if st != pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE {
		agg.failing = append(agg.failing, i)
		answerer := cmp.Or(im.GetSharedFrom(), n.Name)
		agg.answerers[answerer] = true
		if st.Stated() {
			agg.stated[answerer] = true
		}
	}
}

// spread decides between node, zone and cluster scope for the failing
// nodes among the population of live nodes that tried, both as indexes
// into nodes; live is the number of live nodes in the cluster.
//
//   - no failing node: ScopeNone;
//   - every node of the population fails: ScopeCluster, unless the
//     population is a single node of a larger cluster (ScopeNode: one
//     node cannot tell a registry outage from its own egress);
//   - at least two nodes fail, every one has a zone, and every node of
//     those zones fails: ScopeZone, with the zones;
//   - otherwise ScopeNode.
func spread(nodes []Node, failing, population []int, live int) (Scope, []string) {
	switch {
	case len(failing) == 0:
		return ScopeNone, nil
	case len(failing) == len(population):
		if len(population) >= 2 || live <= 1 {
			return ScopeCluster, nil
		}
		return ScopeNode, nil
	case len(failing) < 2:
		return ScopeNode, nil
	}
	zones := map[string]int{} // failing nodes per zone
	for _, i := range failing {
		z := nodes[i].Zone
		if z == "" {
			return ScopeNode, nil
		}
		zones[z]++
	}
	for _, i := range population {
		if z := nodes[i].Zone; z != "" {
			if _, hit := zones[z]; hit {
				zones[z]--
			}
		}
	}
	out := make([]string, 0, len(zones))
	for z, left := range zones {
		if left != 0 { // the zone has nodes that work
			return ScopeNode, nil
		}
		out = append(out, z)
	}
	slices.Sort(out)
	return ScopeZone, out
}

func names(nodes []Node, idx []int) []string {
	if len(idx) == 0 {
		return nil
	}
	out := make([]string, len(idx))
	for k, i := range idx {
		out[k] = nodes[i].Name
	}
	slices.Sort(out)
	return out
}
