// Package shard spreads manifest checks over the cluster (issue 14): every
// distinct (reference, credential source, endpoints) — a Key — is HEADed
// by k of the nodes that have it each interval, chosen by rendezvous
// hashing in different zones where there are any, and their result is
// folded into every other node's view of that image. Each node still pings
// every endpoint it uses, every interval: a node that cannot reach an
// endpoint checks the image itself (and so reports its own unreachable),
// and only a node that reached every endpoint leaves the HEAD to others.
//
// The plan is a pure function of the membership (which nodes have which
// keys, their zones, which of them last failed to reach a key's
// endpoints), the replica count and the budgets, so every aggregator
// replica fed the same agent streams computes the same plan. The agent
// side is agent/pkg/round (the plan it obeys) and the Directive's
// ProbeAssignments.
package shard

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unique"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// ZoneLabel is the node label whose value is the node's zone.
const ZoneLabel = "topology.kubernetes.io/zone"

// DefaultReplicas is --probe-replicas' default: two nodes HEAD each key.
const DefaultReplicas = 2

// DefaultBudgets are the cluster-wide budgets (manifest HEADs per
// interval) that apply unless --registry-budget names the host: Docker Hub
// counts HEADs against its abuse limits, so it gets a conservative one.
func DefaultBudgets() map[string]float64 { return map[string]float64{"docker.io": 600} }

// MaxHold caps how long one 429's Retry-After holds a registry, as the
// agent caps it: a node cannot stop the cluster's checks of a registry for
// longer by naming a longer Retry-After.
const MaxHold = 15 * time.Minute

// Key names one distinct manifest check.
type Key string

// KeyOf is the key of an image report: its reference, credential source
// and endpoint URLs in the runtime's order (pb.ProbeKeyOf).
func KeyOf(im *pb.ImageReport) Key { return Key(pb.ProbeKeyOf(im)) }

func (k Key) proto() *pb.ProbeKey { return pb.ProbeKeyFromString(string(k)) }

// Sink is where shared results are folded into the images the aggregator
// already holds (state.Store.ReplaceImage).
type Sink interface {
	// ReplaceImage replaces node's report of ref with fn(old) when fn
	// returns non-nil; it reports whether the node had ref.
	ReplaceImage(node, ref string, fn func(old *pb.ImageReport) *pb.ImageReport) bool
}

// Options configure a Planner.
type Options struct {
	// Replicas is k, the number of nodes that HEAD each key (default
	// DefaultReplicas).
	Replicas int
	// Budgets are cluster-wide manifest HEADs per interval per registry
	// host (ImageReport.registry); hosts not named have none.
	Budgets map[string]float64
	// Interval is the agents' interval, for the round phase (default 1m).
	Interval time.Duration
	// Sink receives shared results for nodes already in the store.
	Sink Sink
	Now  func() time.Time
	Log  *slog.Logger
}

// The planner numbers what its per-image structures refer to (table):
// nodes, image references, keys (their groups), registry hosts and zones.
type (
	nodeID  uint32
	refID   uint32
	groupID uint32
	hostID  uint32
	// zone is a zone's number: a candidate holds it rather than the
	// name, 1.5 million candidates at 15,000 nodes × 100 images. Below
	// 2^31 (there are fewer zones than nodes): the top bit of a
	// candidate's is its bad flag.
	zone uint32
)

// noZone is the zone of a node without one ("", never released).
const noZone zone = 0

// noNode stands for no node where a nodeID is asked for (decide's last).
const noNode = ^nodeID(0)

// entry is one image of a member: its key's group (whose key and host
// are the entry's: a member of a group has the group's key, and the
// registry host is part of the reference the key names), not the key and
// host strings, with two flags in its top bits (groupIDs stay below
// 2^30). 4 bytes and no pointer, 1.5 million of them at 15,000 nodes ×
// 100 images (issue 21).
type entry uint32

const (
	entryDelegated entry = 1 << 31
	// entryBad: the node checked the key itself and could not reach its
	// endpoints; it is no candidate for the key until it can again.
	entryBad   entry = 1 << 30
	entryGroup entry = entryBad - 1
)

func newEntry(g groupID, delegated, bad bool) entry {
	e := entry(g) & entryGroup
	if delegated {
		e |= entryDelegated
	}
	if bad {
		e |= entryBad
	}
	return e
}

func (e entry) group() groupID  { return groupID(e & entryGroup) }
func (e entry) delegated() bool { return e&entryDelegated != 0 }
func (e entry) bad() bool       { return e&entryBad != 0 }

type member struct {
	// handle is the node's name, as a unique handle (result.node).
	handle unique.Handle[string]
	zone   string
	zoneID zone
	// streams counts the node's live streams (Watch).
	streams int
	images  map[refID]entry
	// hosts counts the node's images per registry host, by host number (a
	// short sorted list: a node names tens of hosts): a host the node
	// names no more leaves ratelimit.
	hosts []hostCount
	// ratelimit is Docker Hub's ratelimit-remaining per registry host, as
	// the node's own last HEAD got it (nil until one did).
	ratelimit map[hostID]string
	// holds counts the registry holds the node's 429s set.
	holds uint64
	// mark is the operation that last added the node to Planner.affected.
	mark uint64
	// gone: the node is being removed (removeLocked); its number is
	// still valid until the nodes are told.
	gone bool
}

// name is the node's name.
func (m *member) name() string { return m.handle.Value() }

type hostCount struct {
	h hostID
	n int32
}

func cmpHost(c hostCount, h hostID) int { return cmp.Compare(c.h, h) }

// hostCount is the node's count of images on host h.
func (m *member) hostCount(h hostID) int32 {
	if i, ok := slices.BinarySearchFunc(m.hosts, h, cmpHost); ok {
		return m.hosts[i].n
	}
	return 0
}

// countHost adds d to the node's count of images on host h and returns
// it; a host counted down to 0 leaves the list.
func (m *member) countHost(h hostID, d int32) int32 {
	i, ok := slices.BinarySearchFunc(m.hosts, h, cmpHost)
	if !ok {
		if d <= 0 {
			return 0
		}
		m.hosts = slices.Insert(m.hosts, i, hostCount{h, 0})
	}
	m.hosts[i].n += d
	n := m.hosts[i].n
	if n <= 0 {
		m.hosts = slices.Delete(m.hosts, i, i+1)
	}
	return n
}

// member is node's member, made on first sight.
func (p *Planner) member(node string) (nodeID, *member) {
	if id, ok := p.nodes.lookup(node); ok {
		return id, *p.nodes.at(id)
	}
	id := p.nodes.acquire(node)
	m := &member{handle: unique.Make(p.nodes.name(id)), images: map[refID]entry{}}
	*p.nodes.at(id) = m
	return id, m
}

// set makes e the node's entry for reference r (whose use the entry
// holds: the caller acquired it), replacing old when the node had one.
func (p *Planner) set(m *member, r refID, e entry, old entry, had bool) {
	h := (*p.groups.at(e.group())).host
	if had && (*p.groups.at(old.group())).host == h {
		// The same host: its count stays, but an image counted again
		// forgets the host's ratelimit-remaining when it was the host's
		// only one, as unhost and counting it again would.
		if len(m.ratelimit) > 0 && m.hostCount(h) == 1 {
			delete(m.ratelimit, h)
		}
	} else {
		if had {
			p.unhost(m, (*p.groups.at(old.group())).host)
		}
		m.countHost(h, 1)
	}
	if !had || e != old {
		m.images[r] = e
	}
}

// remove drops the node's entry for reference r.
func (p *Planner) remove(m *member, r refID) {
	if old, ok := m.images[r]; ok {
		delete(m.images, r)
		p.unhost(m, (*p.groups.at(old.group())).host)
		p.refs.release(r)
	}
}

func (p *Planner) unhost(m *member, h hostID) {
	if m.countHost(h, -1) <= 0 {
		delete(m.ratelimit, h)
	}
}

// setZone moves the node to zone z.
func (p *Planner) setZone(m *member, z string) {
	old := m.zoneID
	m.zone, m.zoneID = z, noZone
	if z != "" {
		m.zoneID = p.zones.acquire(z)
	}
	if old != noZone {
		p.zones.release(old)
	}
}

type group struct {
	key  Key
	host hostID
	// members by node: values without pointers, so that 1.5 million
	// memberships (15,000 nodes × 100 images) are not objects, nor
	// strings, for the garbage collector to trace.
	members map[nodeID]candidate
	chosen  []nodeID
	// picked is how many of chosen were picked by rendezvous (the rest
	// are members that cannot reach the key); fellBack is pick's.
	picked   int
	fellBack bool
	// picks are the picked members' candidates (chosen[:picked]), for
	// unmoved: a change to one of them (its zone, its reach, its leaving)
	// rechooses the group before another message asks.
	picks []candidate
	// answers are the latest answers of the picked probers (chosen[:picked],
	// so at most k): only they may speak for the other members.
	answers []answer
	// result is the key's shared result, when has.
	result result
	has    bool
	// split: the picked probers disagree, so nobody's answer is shared
	// and every member checks the key itself until they agree again.
	split bool
	// planned is what the group adds to its host's load.
	planned int
	// touched: the group is in Planner.touched; fresh: in Planner.fresh.
	touched, fresh bool
	// pk is the key as DirectiveSince sends it, made once and shared by
	// every node's plan (immutable).
	pk *pb.ProbeKey
	// kh is keyHash's, once made.
	kh uint64
}

type answer struct {
	node nodeID
	r    result
}

// answer is node's latest answer, or nil.
func (g *group) answer(node nodeID) *result {
	for i := range g.answers {
		if g.answers[i].node == node {
			return &g.answers[i].r
		}
	}
	return nil
}

func (g *group) setAnswer(node nodeID, r result) {
	if a := g.answer(node); a != nil {
		*a = r
		return
	}
	g.answers = append(g.answers, answer{node, r})
}

func (g *group) dropAnswer(node nodeID) {
	g.answers = slices.DeleteFunc(g.answers, func(a answer) bool { return a.node == node })
}

// hasMember reports whether node is one of g's members.
func (g *group) hasMember(node nodeID) bool {
	_, ok := g.members[node]
	return ok
}

// prober reports whether node is one of the key's picked probers.
func (g *group) prober(node nodeID) bool {
	return g != nil && slices.Contains(g.chosen[:g.picked], node)
}

// keyHash is a hash of the group's key, made once (DirectiveSince's
// generation adds up its members' keys).
func (g *group) keyHash() uint64 {
	if g.kh == 0 {
		h := newFNV()
		h.writeString(string(g.key))
		g.kh = uint64(h) | 1 // 0 is "not made yet"
	}
	return g.kh
}

func (g *group) probeKey() *pb.ProbeKey {
	if g.pk == nil {
		g.pk = g.key.proto()
	}
	return g.pk
}

// unmoved reports whether a reachable candidate c joining g leaves its
// probers as they are, so rechoose can be skipped: the picks are full, c
// scores below all of them, and c's zone cannot win it a place (it is
// one the picks already have, or no pick had to fall back to a taken
// zone). Then every step of pick over the larger set picks what it did:
// a step that found a candidate of a zone not yet chosen picked the
// highest of those, which c does not beat whatever its zone; only a step
// that fell back (no such candidate left) is taken by c when c's zone is
// new to it, and after such a step no pick adds a zone, so a zone the
// picks have was there before it. With three zones and k = 2 a third of
// the joining members are of the zone no pick has: before this they
// rechose the key over all its members, which made filling a 15,000-node
// cluster after a restart quadratic in the members per key.
func (g *group) unmoved(c candidate, k int) bool {
	if c.bad() || g.picked < k {
		return false
	}
	zoneTaken := false
	for _, p := range g.picks {
		if c.score() >= p.score() {
			return false
		}
		if c.zone() != noZone && p.zone() == c.zone() {
			zoneTaken = true
		}
	}
	return zoneTaken || !g.fellBack
}

// candidate is one member of a group as rechoose needs it, kept up to date
// by Ingest so that rechoose looks nothing else up: its rendezvous score
// for the key (computed once on joining), its zone and, in the zone's top
// bit, whether it is bad. 12 bytes, 4-aligned, so that a members map's
// slot with its nodeID is 16 bytes, not 24 (1.5 million of them).
type candidate struct {
	hi, lo uint32
	zb     uint32
}

const candidateBad = 1 << 31

func newCandidate(score uint64, z zone, bad bool) candidate {
	c := candidate{hi: uint32(score >> 32), lo: uint32(score)}
	return c.withZone(z).withBad(bad)
}

func (c candidate) score() uint64 { return uint64(c.hi)<<32 | uint64(c.lo) }
func (c candidate) zone() zone    { return zone(c.zb &^ candidateBad) }
func (c candidate) bad() bool     { return c.zb&candidateBad != 0 }

func (c candidate) withZone(z zone) candidate {
	c.zb = c.zb&candidateBad | uint32(z)&^candidateBad
	return c
}

func (c candidate) withBad(bad bool) candidate {
	c.zb &^= candidateBad
	if bad {
		c.zb |= candidateBad
	}
	return c
}

type result struct {
	// node is the prober's name, as a handle: compared for each delegated
	// image of a round, a handle is one pointer compared, where a name's
	// bytes sat in a cache line of their own for each of thousands of
	// probers (a thirtieth of a round of snapshots at 15,000 nodes). Equal
	// names are equal handles, so a node back under a new number is still
	// the prober of its earlier result.
	node unique.Handle[string]
	im   *pb.ImageReport
	// endpoints is what every node the result is folded into shows: the
	// prober's endpoint results without its ratelimit-remaining (that is
	// its egress budget, not theirs). One slice shared by all of them
	// (immutable, like everything in the store).
	endpoints []*pb.EndpointResult
}

func newResult(node unique.Handle[string], im *pb.ImageReport) result {
	r := result{node: node, im: im, endpoints: im.GetEndpoints()}
	cloned := false
	for i, e := range im.GetEndpoints() {
		if e.GetRatelimitRemaining() != "" {
			if !cloned {
				r.endpoints, cloned = slices.Clone(im.GetEndpoints()), true
			}
			c := proto.Clone(e).(*pb.EndpointResult)
			c.RatelimitRemaining = ""
			r.endpoints[i] = c
		}
	}
	return r
}

// Planner computes the probe plan and shares results. Safe for concurrent
// use.
type Planner struct {
	opts Options

	mu sync.Mutex
	// nodes, refs, groups (by key), hosts and zones number the names
	// the per-image structures refer to (table). A reference's v is the
	// group last found for it, a hint checked against the key.
	nodes  table[nodeID, *member]
	refs   table[refID, groupID]
	groups table[groupID, *group]
	hosts  table[hostID, struct{}]
	zones  table[zone, struct{}]
	holds  map[string]time.Time // registry host → no HEADs before
	load   map[string]int       // registry host → HEADs per interval the plan asks for
	factor map[string]float64   // registry host → budget factor (1, 1/2, 1/4, ...)
	watch  map[string]map[chan struct{}]struct{}
	// fresh are the groups whose shared result changed and is yet to be
	// folded into the members (flush).
	fresh      []*group
	recomputes uint64
	interner   *interner

	// What one operation (Ingest, removeLocked) works with, kept between
	// them: the nodes whose plan may have changed (affected, marked with
	// epoch), the groups to rechoose (touched), a snapshot's references
	// (seen), the references it drops (dropped).
	affected []nodeID
	epoch    uint64
	touched  []groupID
	seen     map[refID]struct{}
	dropped  []refID
	refIDs   []refID
	// scratch and scratchIDs are rechoose's candidate list, kept between
	// calls; sorted and checks are DirectiveSince's.
	scratch    []Scored
	scratchIDs []nodeID
	sorted     []refID
	checks     map[string]int
}

// New returns an empty Planner.
func New(opts Options) *Planner {
	if opts.Replicas <= 0 {
		opts.Replicas = DefaultReplicas
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	p := &Planner{
		opts:     opts,
		nodes:    newTable[nodeID, *member](),
		refs:     newTable[refID, groupID](),
		groups:   newTable[groupID, *group](),
		hosts:    newTable[hostID, struct{}](),
		zones:    newTable[zone, struct{}](),
		holds:    map[string]time.Time{},
		load:     map[string]int{},
		factor:   map[string]float64{},
		watch:    map[string]map[chan struct{}]struct{}{},
		seen:     map[refID]struct{}{},
		checks:   map[string]int{},
		interner: newInterner(),
	}
	p.zones.acquire("") // noZone, for good
	return p
}

// Watch returns a channel that receives a value whenever node's plan may
// have changed (Directive then says what it is), and a function that
// stops watching.
func (p *Planner) Watch(node string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.watch[node] == nil {
		p.watch[node] = map[chan struct{}]struct{}{}
	}
	p.watch[node][ch] = struct{}{}
	_, m := p.member(node)
	m.streams++
	return ch, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.watch[node], ch)
		if len(p.watch[node]) == 0 {
			delete(p.watch, node)
		}
		if id, ok := p.nodes.lookup(node); ok {
			m := *p.nodes.at(id)
			m.streams--
			if m.streams <= 0 {
				// The node's last stream ended: it checks nothing for
				// others any more.
				p.removeLocked(node)
				p.flush()
			}
		}
	}
}

// begin starts an operation: no node affected, no group touched yet.
func (p *Planner) begin() {
	p.epoch++
	p.affected = p.affected[:0]
}

// affect adds node to the nodes whose plan may have changed.
func (p *Planner) affect(node nodeID) {
	if m := *p.nodes.at(node); m.mark != p.epoch {
		m.mark = p.epoch
		p.affected = append(p.affected, node)
	}
}

// touch adds g to the groups to rechoose.
func (p *Planner) touch(gid groupID) {
	if g := *p.groups.at(gid); !g.touched {
		g.touched = true
		p.touched = append(p.touched, gid)
	}
}

// rechooseTouched rechooses the touched groups.
func (p *Planner) rechooseTouched() {
	for _, gid := range p.touched {
		(*p.groups.at(gid)).touched = false
		p.rechoose(gid)
	}
	p.touched = p.touched[:0]
}

// groupOf is the group of im's key, made on first sight; r is im's
// reference and old the node's entry for it, if it had one. The key is
// looked for among the groups the node's entry and the reference name
// before it is spelt out (KeyOf) and looked up.
func (p *Planner) groupOf(r refID, im *pb.ImageReport, old entry, had bool) (groupID, *group) {
	if had {
		if g := *p.groups.at(old.group()); g.key.matches(im) {
			return old.group(), g
		}
	}
	hint := p.refs.at(r)
	if p.groups.live(*hint) {
		if g := *p.groups.at(*hint); g.key.matches(im) {
			return *hint, g
		}
	}
	k := KeyOf(im)
	gid, ok := p.groups.lookup(string(k))
	if !ok {
		gid = p.groups.acquire(string(k))
		// One copy of the key for the table and the group.
		*p.groups.at(gid) = &group{key: Key(p.groups.name(gid)), host: p.hosts.acquire(im.GetRegistry()), members: map[nodeID]candidate{}}
	}
	*p.refs.at(r) = gid
	return gid, *p.groups.at(gid)
}

// matches reports whether im's key is k (KeyOf(im) == k) without spelling
// it out.
func (k Key) matches(im *pb.ImageReport) bool {
	s, ok := strings.CutPrefix(string(k), im.GetImage())
	if !ok || s == "" || s[0] != 0 {
		return false
	}
	if s, ok = strings.CutPrefix(s[1:], im.GetCredentialSource()); !ok {
		return false
	}
	for _, e := range im.GetEndpoints() {
		if s == "" || s[0] != 0 {
			return false
		}
		if s, ok = strings.CutPrefix(s[1:], e.GetUrl()); !ok {
			return false
		}
	}
	return s == ""
}

// Ingest takes a node's message before it is applied: for a snapshot
// (images is then the whole node) or an update (upserts and removed
// references). Delegated images in images get their shared result folded
// in (the reports are modified in place), apply is called (it applies
// the message to the store) and the results the message brings are
// folded into the other nodes holding the same keys. Everything runs under
// the planner's lock, so a result folded in is never overwritten by an
// older one.
func (p *Planner) Ingest(node string, info *pb.Node, snapshot bool, images []*pb.ImageReport, removed []string, apply func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.opts.Now()
	// Ingest without Watch (a test, or a stream that has not started
	// watching): the node is a member until Forget.
	id, m := p.member(node)
	node = m.name()
	p.begin()
	p.affect(id)
	if info != nil {
		if z := info.GetLabels()[ZoneLabel]; z != m.zone {
			p.setZone(m, z)
			for _, e := range m.images {
				g := *p.groups.at(e.group())
				if c, ok := g.members[id]; ok {
					c = c.withZone(m.zoneID)
					g.members[id] = c
				}
				p.touch(e.group())
			}
		}
	}
	if snapshot && len(m.images) == 0 && len(images) > 8 {
		m.images = make(map[refID]entry, len(images)) // the node's first: sized once, not grown
	}
	dropped := p.dropped[:0]
	for _, ref := range removed {
		if r, ok := p.refs.lookup(ref); ok {
			dropped = append(dropped, r)
		}
	}
	// A snapshot's references are numbered (a use each) before what it
	// drops is dropped, so that each is looked up once.
	refs := p.refIDs[:0]
	if snapshot {
		clear(p.seen)
		for _, im := range images {
			r := p.refs.acquire(im.GetImage())
			refs = append(refs, r)
			p.seen[r] = struct{}{}
		}
		for r := range m.images {
			if _, ok := p.seen[r]; !ok {
				dropped = append(dropped, r)
			}
		}
	}
	for _, r := range dropped {
		if e, ok := m.images[r]; ok {
			p.remove(m, r)
			p.leave(id, e.group())
		}
	}
	p.dropped = dropped[:0]
	for h, until := range p.holds {
		if !until.After(now) {
			delete(p.holds, h)
		}
	}
	// The node's answers and 429s, weighed once the probers are chosen
	// again: only a key's picked probers speak for the other members.
	var answers, limited []keyed
	for i, im := range images {
		im.SharedFrom = "" // the aggregator's field, never the agent's
		p.interner.report(im)
		var r refID
		if snapshot {
			r = refs[i]
		} else {
			r = p.refs.acquire(im.GetImage())
		}
		old, had := m.images[r]
		if had {
			p.refs.release(r) // the entry holds a use already
		}
		gid, g := p.groupOf(r, im, old, had)
		// A node is in a group through one entry only, and its
		// candidate's bad is its entry's: the node's entry says whether
		// it is in the group, without a look in the group's members
		// (one of thousands for a common image, and that look was a
		// sixth of a round of snapshots at 15,000 nodes).
		in := had && old.group() == gid
		if !in && g.hasMember(id) {
			// Another of the node's references has this one's key (a
			// reference or credential source with a NUL in it spells
			// another's): the node checks this one itself, unplanned,
			// so that a node is in a group through one entry only.
			if had {
				p.remove(m, r)
				p.leave(id, old.group())
			} else {
				p.refs.release(r)
			}
			continue
		}
		e := newEntry(gid, im.GetDelegated(), !im.GetDelegated() && im.GetStatus() == pb.ImageStatus_IMAGE_STATUS_UNREACHABLE)
		if had {
			if old.group() != gid {
				p.leave(id, old.group())
			} else if old.bad() != e.bad() {
				p.touch(gid)
			}
		}
		p.set(m, r, e, old, had)
		if !in {
			c := newCandidate(score(string(g.key), node), m.zoneID, e.bad())
			if !g.unmoved(c, p.opts.Replicas) || len(g.members) == 1 || g.split {
				p.touch(gid)
			}
			g.members[id] = c
		} else if old.bad() != e.bad() {
			g.members[id] = g.members[id].withBad(e.bad())
		}
		if !e.delegated() {
			for _, ep := range im.GetEndpoints() {
				if r := ep.GetRatelimitRemaining(); r != "" {
					if m.ratelimit == nil {
						m.ratelimit = map[hostID]string{}
					}
					m.ratelimit[g.host] = r
				}
				if ep.GetRetryAfter() != nil && ep.GetHttpStatus() == 429 {
					limited = append(limited, keyed{g, ep.GetRetryAfter().AsDuration(), im})
				}
			}
		}
		if e.delegated() {
			if g.has && g.result.node != m.handle {
				foldInto(im, g.result) // not applied yet: ours to change (the store shares it, nodeimage.Table)
			}
			continue
		}
		switch im.GetStatus() {
		case pb.ImageStatus_IMAGE_STATUS_UNKNOWN, pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED:
			// No answer about the image (a 429 is the registry's
			// refusal to answer): the prober's last answer stands.
			continue
		}
		if !e.bad() { // unreachable is the node's own: nothing to share
			answers = append(answers, keyed{g: g, im: im})
		}
	}
	p.refIDs = refs[:0]
	p.rechooseTouched()
	// A group rechosen empty is gone: its chosen is empty, so it has no
	// prober below.
	var holdHosts []string
	for _, l := range limited {
		g := l.g
		if !g.prober(id) || l.retryAfter <= 0 {
			continue // a node that is no prober of the key does not HEAD it for anyone
		}
		until := now.Add(min(l.retryAfter, MaxHold))
		m.holds++
		host := p.hosts.name(g.host)
		if until.After(p.holds[host]) {
			p.holds[host] = until
			if !slices.Contains(holdHosts, host) {
				holdHosts = append(holdHosts, host)
			}
		}
	}
	for _, a := range answers {
		g := a.g
		if !g.prober(id) {
			continue // its own view, never the other members'
		}
		g.setAnswer(id, newResult(m.handle, a.im))
		p.decide(g, id)
	}
	for _, h := range holdHosts {
		p.opts.Log.Info("registry rate-limited a node; holding its manifest checks cluster-wide", "registry", h, "node", node,
			"until", p.holds[h].UTC().Format(time.RFC3339))
		p.hostMembers(h, p.affect)
	}
	apply()
	p.flush()
	p.notify(p.affected)
}

// keyed is one image report of a message, for a key: an answer, or a 429
// with its Retry-After.
type keyed struct {
	g          *group
	retryAfter time.Duration
	im         *pb.ImageReport
}

// decide weighs the picked probers' answers of g after one of them, last
// (noNode: none), answered or the probers changed: all of them agree (and
// at least two, or the one there is, answered) and the key's shared result
// is theirs; they disagree and nobody's is shared, every member checking
// the key itself until they agree again. Members whose role changes are
// affected; a changed result is folded into the members on flush.
func (p *Planner) decide(g *group, last nodeID) {
	var first *result
	n, split := 0, false
	for _, id := range g.chosen[:g.picked] {
		a := g.answer(id)
		if a == nil {
			continue
		}
		n++
		if first == nil {
			first = a
		} else if !agree(first.im, a.im) {
			split = true
		}
	}
	if split != g.split {
		g.split = split
		for id := range g.members {
			p.affect(id)
		}
		p.countLoad(g)
		if split {
			probers := make([]string, g.picked)
			for i, id := range g.chosen[:g.picked] {
				probers[i] = p.nodes.name(id)
			}
			p.opts.Log.Info("the probers of an image disagree; every node that has it checks it itself until they agree",
				"image", imageOf(g.key), "probers", probers)
		}
	}
	if split {
		g.result, g.has = result{}, false
		return
	}
	if n == 0 || n < min(2, g.picked) {
		return // pending: the last agreed result stands
	}
	r := *first
	if a := g.answer(last); a != nil {
		r = *a
	}
	old, had := g.result, g.has
	g.result, g.has = r, true
	if (!had || !sameResult(old.im, r.im)) && !g.fresh {
		g.fresh = true
		p.fresh = append(p.fresh, g)
	}
}

// flush folds the groups' changed results into their members.
func (p *Planner) flush() {
	for _, g := range p.fresh {
		if g.fresh {
			g.fresh = false
			p.share(g)
		}
	}
	clear(p.fresh)
	p.fresh = p.fresh[:0]
}

// countLoad moves g's host load to what g plans now: its chosen probers,
// or every member while its probers disagree.
func (p *Planner) countLoad(g *group) {
	planned := len(g.chosen)
	if g.split && len(g.members) > 0 {
		planned = len(g.members)
	}
	d := planned - g.planned
	g.planned = planned
	p.setLoad(p.hosts.name(g.host), d)
}

// Forget drops a node (deleted from the cluster, or no stream left).
func (p *Planner) Forget(node string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removeLocked(node)
	p.flush()
}

// removeLocked drops node from every group and tells the nodes whose plan
// may have changed; its number is free afterwards.
func (p *Planner) removeLocked(node string) {
	id, ok := p.nodes.lookup(node)
	if !ok {
		return
	}
	m := *p.nodes.at(id)
	m.gone = true
	p.begin()
	for r, e := range m.images {
		p.leave(id, e.group())
		p.refs.release(r)
	}
	p.rechooseTouched()
	p.notify(p.affected)
	if m.zoneID != noZone {
		p.zones.release(m.zoneID)
	}
	p.nodes.release(id)
}

// leave takes node out of group gid.
func (p *Planner) leave(node nodeID, gid groupID) {
	g := *p.groups.at(gid)
	delete(g.members, node)
	g.dropAnswer(node)
	// A member that was no prober leaving changes no pick (but the load
	// of a key whose probers disagree: every member checks it).
	if slices.Contains(g.chosen, node) || len(g.members) <= 1 || g.split {
		p.touch(gid)
	}
	if g.has && g.result.node == (*p.nodes.at(node)).handle {
		g.result, g.has = result{}, false // another prober's result replaces it soon
	}
}

// rechoose recomputes the group's probers and adds the nodes whose role
// changed to affected. The probers are k of the members that can reach
// the key's endpoints, plus every member that cannot (it checks the key
// itself anyway, to report its own unreachable). A group left without
// members is dropped.
func (p *Planner) rechoose(gid groupID) {
	p.recomputes++
	g := *p.groups.at(gid)
	var next []nodeID
	if len(g.members) > 0 {
		// Reused: rechoose runs for every key a node joins.
		cands, ids := p.scratch[:0], p.scratchIDs[:0]
		var bad []nodeID
		for id, c := range g.members {
			if c.bad() {
				bad = append(bad, id)
			} else {
				cands = append(cands, Scored{Candidate{Node: p.nodes.name(id), Zone: p.zones.name(c.zone())}, c.score()})
				ids = append(ids, id)
			}
		}
		slices.Sort(bad)
		taken, fellBack := pick(cands, p.opts.Replicas)
		next = make([]nodeID, len(taken), len(taken)+len(bad))
		g.picks = g.picks[:0]
		for i, j := range taken {
			next[i] = ids[j]
			g.picks = append(g.picks, g.members[ids[j]])
		}
		p.scratch, p.scratchIDs = cands[:0], ids[:0]
		g.picked, g.fellBack = len(next), fellBack
		next = append(next, bad...)
	} else {
		g.picked, g.fellBack, g.picks = 0, false, nil
	}
	old := g.chosen
	g.chosen = next
	for _, n := range old {
		if !slices.Contains(next, n) {
			p.affect(n)
		}
	}
	for _, n := range next {
		if !slices.Contains(old, n) {
			p.affect(n)
		}
	}
	if len(g.members) == 2 { // it may have had one: the other's plan lists it now
		for n := range g.members {
			p.affect(n)
		}
	}
	// Only the picked probers' answers count.
	g.answers = slices.DeleteFunc(g.answers, func(a answer) bool { return !g.prober(a.node) })
	if len(g.members) > 0 {
		p.decide(g, noNode)
	}
	p.countLoad(g)
	if len(g.members) == 0 {
		g.result, g.has, g.fresh = result{}, false, false
		p.hosts.release(g.host)
		p.groups.release(gid)
	}
}

func imageOf(k Key) string {
	s, _, _ := strings.Cut(string(k), "\x00")
	return s
}

// setLoad moves host's planned HEADs per interval by d and, when the
// budget factor changes, tells every node with keys on the host.
func (p *Planner) setLoad(host string, d int) {
	if d == 0 {
		return
	}
	p.load[host] += d
	if p.load[host] <= 0 {
		// No node names the host any more: nothing of it is kept.
		delete(p.load, host)
		delete(p.factor, host)
		delete(p.holds, host)
		return
	}
	budget, ok := p.opts.Budgets[host]
	if !ok || budget <= 0 {
		return
	}
	f := budgetFactor(float64(p.load[host]), budget)
	if old, ok := p.factor[host]; !ok || old != f {
		p.factor[host] = f
		p.hostMembers(host, p.notifyNode)
	}
}

// budgetFactor is the share of its planned HEADs a node may send: 1 while
// the plan fits the budget, else the largest power of ½ that makes it fit.
// Powers of ½ keep a node's share from changing with every node that
// joins.
func budgetFactor(load, budget float64) float64 {
	f := 1.0
	for load*f > budget && f > 1.0/1024 {
		f /= 2
	}
	return f
}

// hostMembers calls fn for every node with a key on host.
func (p *Planner) hostMembers(host string, fn func(nodeID)) {
	h, ok := p.hosts.lookup(host)
	if !ok {
		return
	}
	p.nodes.each(func(id nodeID, m *member) {
		if !m.gone && m.hostCount(h) > 0 {
			fn(id)
		}
	})
}

// share folds g's new result into every other member whose stored report
// of it is delegated.
func (p *Planner) share(g *group) {
	if p.opts.Sink == nil || !g.has {
		return
	}
	r := g.result
	ref := imageOf(g.key)
	rid, ok := p.refs.lookup(ref)
	if !ok {
		return // no node has the reference
	}
	for n := range g.members {
		m := *p.nodes.at(n)
		if m.handle == r.node || !m.images[rid].delegated() {
			continue
		}
		p.opts.Sink.ReplaceImage(m.name(), ref, func(old *pb.ImageReport) *pb.ImageReport {
			if !old.GetDelegated() || !g.key.matches(old) {
				return nil
			}
			return fold(old, r)
		})
	}
}

// notify tells the nodes their plan may have changed.
func (p *Planner) notify(nodes []nodeID) {
	for _, n := range nodes {
		p.notifyNode(n)
	}
}

func (p *Planner) notifyNode(n nodeID) {
	for ch := range p.watch[p.nodes.name(n)] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// fold is a copy of own (a delegated image whose node reached every
// endpoint, already in the store and so not to be changed) with the
// shared result's answer.
func fold(own *pb.ImageReport, r result) *pb.ImageReport {
	out := proto.Clone(own).(*pb.ImageReport)
	foldInto(out, r)
	return out
}

// foldInto puts the shared result's answer into im. Strings, timestamps
// and endpoint results are shared with the result, not copied.
func foldInto(im *pb.ImageReport, r result) {
	s := r.im
	im.Status, im.Reason, im.Degraded = s.GetStatus(), s.GetReason(), s.GetDegraded()
	im.CheckedAt = s.GetCheckedAt()
	im.SharedFrom = r.node.Value()
	im.Endpoints = r.endpoints
	// The prober's digest of what the registry serves, as this node's drift target.
	at := serves(s)
	im.Drifted, im.RegistryDigest = false, ""
	if !strings.Contains(im.GetImage(), "@") && at != "" && im.GetDigest() != "" && at != im.GetDigest() &&
		s.GetStatus() == pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
		im.Drifted, im.RegistryDigest = true, at
	}
}

// agree reports whether two probers' checks of a key say the same about
// it: status, degraded, the digest the registry serves, and each
// endpoint's answer. Reasons and the probers' own digests may differ.
func agree(a, b *pb.ImageReport) bool {
	if a.GetStatus() != b.GetStatus() || a.GetDegraded() != b.GetDegraded() || serves(a) != serves(b) ||
		len(a.GetEndpoints()) != len(b.GetEndpoints()) {
		return false
	}
	for i, e := range a.GetEndpoints() {
		f := b.GetEndpoints()[i]
		if e.GetStatus() != f.GetStatus() || e.GetHttpStatus() != f.GetHttpStatus() {
			return false
		}
	}
	return true
}

// serves is the digest the registry serves, as a check saw it: its drift
// target, or its own digest when it had not drifted.
func serves(im *pb.ImageReport) string {
	if im.GetDrifted() {
		return im.GetRegistryDigest()
	}
	return im.GetDigest()
}

// sameResult compares two checks of a key, ignoring times and latencies.
func sameResult(a, b *pb.ImageReport) bool {
	if a.GetStatus() != b.GetStatus() || a.GetReason() != b.GetReason() || a.GetDegraded() != b.GetDegraded() ||
		a.GetDigest() != b.GetDigest() || a.GetDrifted() != b.GetDrifted() || a.GetRegistryDigest() != b.GetRegistryDigest() ||
		len(a.GetEndpoints()) != len(b.GetEndpoints()) {
		return false
	}
	for i, e := range a.GetEndpoints() {
		f := b.GetEndpoints()[i]
		if e.GetStatus() != f.GetStatus() || e.GetReason() != f.GetReason() || e.GetHttpStatus() != f.GetHttpStatus() {
			return false
		}
	}
	return true
}

// DirectiveSince is node's plan now, or nil when the planner knows
// nothing of the node or the plan's generation is still since (the one
// last sent; "" for none): the plan is hashed first and built only when it
// changed. Nodes are told their plan
// may have changed far more often than it does (every member of a key
// whose probers were chosen again), and building 100 keys' messages for
// each telling is most of what a round of 5,000 nodes allocates.
func (p *Planner) DirectiveSince(node, since string) *pb.ProbeAssignments {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.nodes.lookup(node)
	if !ok {
		return nil
	}
	m := *p.nodes.at(id)
	now := p.opts.Now()
	// The generation: a hash of each image's role and key, added up so
	// that it needs no order (a node's message asks for its plan, and the
	// plan most often has not changed: the references are sorted only to
	// build a new one), then the budgets and the phase.
	checks := p.checks
	clear(checks)
	var sum uint64
	for _, e := range m.images {
		g := *p.groups.at(e.group())
		host := p.hosts.name(g.host)
		var role uint64
		switch {
		case len(g.members) <= 1:
			checks[host]++
			continue
		case g.split || slices.Contains(g.chosen, id):
			role = 1
			checks[host]++
		default:
			role = 2
		}
		sum += mix(g.keyHash() + role)
	}
	h := newFNV()
	h.writeString(strconv.FormatUint(sum, 16))
	h.writeByte(0)
	hosts := slices.Sorted(maps.Keys(checks))
	var budgets []*pb.RegistryBudget
	for _, host := range hosts {
		b := &pb.RegistryBudget{Host: host}
		if f, ok := p.factor[host]; ok && f < 1 {
			b.RequestsPerInterval = math.Max(1, math.Floor(float64(checks[host])*f))
		}
		var hold time.Time
		if until := p.holds[host]; until.After(now) {
			b.HoldUntil, hold = timestamppb.New(until), until
		}
		if b.RequestsPerInterval > 0 || b.HoldUntil != nil {
			budgets = append(budgets, b)
			_, _ = fmt.Fprintf(&h, "%s\x00%g\x00%d\x00", host, b.RequestsPerInterval, hold.UnixNano())
		}
	}
	phase := time.Duration(score("phase", node) % uint64(p.opts.Interval))
	h.writeString(strconv.FormatInt(int64(phase), 10))
	gen := strconv.FormatUint(uint64(h), 16)
	if gen == since {
		return nil
	}
	pa := &pb.ProbeAssignments{Budgets: budgets, Phase: durationpb.New(phase), Generation: gen}
	refs := p.sorted[:0]
	for r := range m.images {
		refs = append(refs, r)
	}
	slices.SortFunc(refs, func(a, b refID) int { return strings.Compare(p.refs.name(a), p.refs.name(b)) })
	p.sorted = refs[:0]
	for _, r := range refs {
		g := *p.groups.at(m.images[r].group())
		switch {
		case len(g.members) <= 1:
		case g.split || slices.Contains(g.chosen, id):
			pa.Assigned = append(pa.Assigned, g.probeKey())
		default:
			pa.Delegated = append(pa.Delegated, g.probeKey())
		}
	}
	return pa
}

// Stats are the planner's numbers for metrics and the benchmark.
type Stats struct {
	Keys    int
	Members int
	// Load is HEADs per interval the plan asks for, per registry host.
	Load map[string]int
	// Factor is the budget factor per registry host with a budget.
	Factor map[string]float64
	// Holds is how long each held host stays held.
	Holds map[string]time.Duration
	// RateLimitRemaining is Docker Hub's ratelimit-remaining (the number
	// before ';') per node and registry host, from the node's own HEADs.
	RateLimitRemaining map[[2]string]float64
	// HoldsByNode counts the holds each node's 429s set.
	HoldsByNode map[string]uint64
	Recomputes  uint64
}

// Stats returns the planner's numbers now.
func (p *Planner) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.opts.Now()
	s := Stats{Keys: p.groups.len(), Members: p.nodes.len(), Load: maps.Clone(p.load), Factor: maps.Clone(p.factor),
		Holds: map[string]time.Duration{}, RateLimitRemaining: map[[2]string]float64{}, HoldsByNode: map[string]uint64{},
		Recomputes: p.recomputes}
	for h, until := range p.holds {
		if d := until.Sub(now); d > 0 {
			s.Holds[h] = d
		}
	}
	p.nodes.each(func(_ nodeID, m *member) {
		if m.holds > 0 {
			s.HoldsByNode[m.name()] = m.holds
		}
		for h, v := range m.ratelimit {
			num, _, _ := strings.Cut(v, ";")
			if f, err := strconv.ParseFloat(strings.TrimSpace(num), 64); err == nil {
				s.RateLimitRemaining[[2]string{m.name(), p.hosts.name(h)}] = f
			}
		}
	})
	return s
}

// String describes the options, for the startup log.
func (o Options) String() string {
	return fmt.Sprintf("replicas=%d budgets=%v", o.Replicas, o.Budgets)
}
