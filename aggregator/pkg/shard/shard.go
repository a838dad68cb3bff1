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
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

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

// entry is one image of a member: its key's group (whose key and host
// are the entry's: a member of a group has the group's key, and the
// registry host is part of the reference the key names), not the key and
// host strings, so that an entry is 16 bytes: 1.5 million of them at
// 15,000 nodes × 100 images (issue 21).
type entry struct {
	g         *group
	delegated bool
	// bad: the node checked the key itself and could not reach its
	// endpoints; it is no candidate for the key until it can again.
	bad bool
}

type member struct {
	zone    string
	streams int
	images  map[string]entry // by reference
	// hosts counts the node's images per registry host: a host the node
	// names no more leaves ratelimit.
	hosts map[string]int
	// ratelimit is Docker Hub's ratelimit-remaining per registry host, as
	// the node's own last HEAD got it.
	ratelimit map[string]string
	// holds counts the registry holds the node's 429s set.
	holds uint64
}

func newMember() *member {
	return &member{images: map[string]entry{}, hosts: map[string]int{}, ratelimit: map[string]string{}}
}

// set makes e the node's entry for ref.
func (m *member) set(ref string, e entry) {
	if old, ok := m.images[ref]; ok {
		m.unhost(old.g.host)
	}
	m.images[ref] = e
	m.hosts[e.g.host]++
}

// remove drops the node's entry for ref.
func (m *member) remove(ref string) {
	if old, ok := m.images[ref]; ok {
		delete(m.images, ref)
		m.unhost(old.g.host)
	}
}

func (m *member) unhost(host string) {
	if m.hosts[host]--; m.hosts[host] <= 0 {
		delete(m.hosts, host)
		delete(m.ratelimit, host)
	}
}

type group struct {
	key  Key
	host string
	// members by node name: values, not pointers, so that 500,000
	// memberships (5,000 nodes × 100 images) are not 500,000 objects for
	// the garbage collector to trace.
	members map[string]candidate
	chosen  []string
	// picked is how many of chosen were picked by rendezvous (the rest
	// are members that cannot reach the key); fellBack is pick's.
	picked   int
	fellBack bool
	// answers are the latest answers of the picked probers (chosen[:picked]),
	// by node: only they may speak for the other members.
	answers map[string]result
	// split: the picked probers disagree, so nobody's answer is shared
	// and every member checks the key itself until they agree again.
	split bool
	// planned is what the group adds to its host's load.
	planned int
}

// prober reports whether node is one of the key's picked probers.
func (g *group) prober(node string) bool {
	return g != nil && slices.Contains(g.chosen[:g.picked], node)
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
	if c.bad || g.picked < k {
		return false
	}
	zoneTaken := false
	for _, n := range g.chosen[:g.picked] {
		p, ok := g.members[n]
		if !ok || c.score >= p.score {
			return false
		}
		if c.zone != noZone && p.zone == c.zone {
			zoneTaken = true
		}
	}
	return zoneTaken || !g.fellBack
}

// zone is a zone's number in the planner (Planner.zoneID): a candidate
// holds it rather than the name, 1.5 million candidates at 15,000 nodes
// × 100 images.
type zone uint16

// noZone is the zone of a node without one.
const noZone zone = 0

// zoneID is z's number, given on first sight ("" is noZone).
func (p *Planner) zoneID(z string) zone {
	if id, ok := p.zoneIDs[z]; ok {
		return id
	}
	id := zone(len(p.zoneNames))
	p.zoneIDs[z] = id
	p.zoneNames = append(p.zoneNames, z)
	return id
}

// candidate is one member of a group as rechoose needs it, kept up to date
// by Ingest so that rechoose looks nothing else up.
type candidate struct {
	score uint64 // rendezvous score for the key, computed once on joining
	zone  zone
	bad   bool
}

type result struct {
	node string
	im   *pb.ImageReport
	// endpoints is what every node the result is folded into shows: the
	// prober's endpoint results without its ratelimit-remaining (that is
	// its egress budget, not theirs). One slice shared by all of them
	// (immutable, like everything in the store).
	endpoints []*pb.EndpointResult
}

func newResult(node string, im *pb.ImageReport) result {
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

	mu      sync.Mutex
	nodes   map[string]*member
	groups  map[Key]*group
	results map[Key]result
	holds   map[string]time.Time // registry host → no HEADs before
	load    map[string]int       // registry host → HEADs per interval the plan asks for
	factor  map[string]float64   // registry host → budget factor (1, 1/2, 1/4, ...)
	watch   map[string]map[chan struct{}]struct{}
	// fresh are the keys whose shared result changed and is yet to be
	// folded into the members (flush).
	fresh      map[Key]bool
	recomputes uint64
	// scratch is rechoose's candidate list, kept between calls.
	scratch []Scored
	// zoneIDs and zoneNames number the zones (zoneID).
	zoneIDs   map[string]zone
	zoneNames []string
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
	return &Planner{
		opts:      opts,
		nodes:     map[string]*member{},
		groups:    map[Key]*group{},
		results:   map[Key]result{},
		holds:     map[string]time.Time{},
		load:      map[string]int{},
		factor:    map[string]float64{},
		watch:     map[string]map[chan struct{}]struct{}{},
		fresh:     map[Key]bool{},
		zoneIDs:   map[string]zone{"": noZone},
		zoneNames: []string{""},
	}
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
	if m := p.nodes[node]; m != nil {
		m.streams++
	} else {
		m := newMember()
		m.streams = 1
		p.nodes[node] = m
	}
	return ch, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.watch[node], ch)
		if len(p.watch[node]) == 0 {
			delete(p.watch, node)
		}
		if m := p.nodes[node]; m != nil {
			m.streams--
			if m.streams <= 0 {
				// The node's last stream ended: it checks nothing for
				// others any more.
				p.notify(p.removeLocked(node))
				p.flush()
			}
		}
	}
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
	m := p.nodes[node]
	if m == nil {
		// Ingest without Watch (a test, or a stream that has not started
		// watching): the node is a member until Forget.
		m = newMember()
		p.nodes[node] = m
	}
	affected := map[string]bool{node: true}
	touched := map[Key]bool{}
	if info != nil {
		if z := info.GetLabels()[ZoneLabel]; z != m.zone {
			m.zone = z
			zone := p.zoneID(z)
			for _, e := range m.images {
				if c, ok := e.g.members[node]; ok {
					c.zone = zone
					e.g.members[node] = c
				}
				touched[e.g.key] = true
			}
		}
	}
	if snapshot {
		keep := make(map[string]bool, len(images))
		for _, im := range images {
			keep[im.GetImage()] = true
		}
		for ref := range m.images {
			if !keep[ref] {
				removed = append(removed, ref)
			}
		}
	}
	for _, ref := range removed {
		if e, ok := m.images[ref]; ok {
			m.remove(ref)
			p.leave(node, e.g.key, touched)
		}
	}
	for h, until := range p.holds {
		if !until.After(now) {
			delete(p.holds, h)
		}
	}
	// The node's answers and 429s, weighed once the probers are chosen
	// again: only a key's picked probers speak for the other members.
	var answers, limited []keyed
	for _, im := range images {
		im.SharedFrom = "" // the aggregator's field, never the agent's
		intern(im)
		k := KeyOf(im)
		g := p.groups[k]
		if g == nil {
			g = &group{key: k, host: im.GetRegistry(), members: map[string]candidate{}, answers: map[string]result{}}
			p.groups[k] = g
		}
		k = g.key // one copy of the key for all members
		e := entry{g: g, delegated: im.GetDelegated(),
			bad: !im.GetDelegated() && im.GetStatus() == pb.ImageStatus_IMAGE_STATUS_UNREACHABLE}
		if old, ok := m.images[im.GetImage()]; ok {
			if old.g != g {
				p.leave(node, old.g.key, touched)
			} else if old.bad != e.bad {
				touched[k] = true
			}
		}
		m.set(im.GetImage(), e)
		if c, ok := g.members[node]; !ok {
			c = candidate{score: score(string(k), node), zone: p.zoneID(m.zone), bad: e.bad}
			if !g.unmoved(c, p.opts.Replicas) || len(g.members) == 1 || g.split {
				touched[k] = true
			}
			g.members[node] = c
		} else if c.bad != e.bad {
			c.bad = e.bad
			g.members[node] = c
		}
		if !e.delegated {
			for _, ep := range im.GetEndpoints() {
				if r := ep.GetRatelimitRemaining(); r != "" {
					m.ratelimit[g.host] = r
				}
				if ep.GetRetryAfter() != nil && ep.GetHttpStatus() == 429 {
					limited = append(limited, keyed{k, ep.GetRetryAfter().AsDuration(), im})
				}
			}
		}
		if e.delegated {
			if r, ok := p.results[k]; ok && r.node != node {
				foldInto(im, r) // not applied yet: ours to change (the store shares it, nodeimage.Table)
			}
			continue
		}
		switch im.GetStatus() {
		case pb.ImageStatus_IMAGE_STATUS_UNKNOWN, pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED:
			// No answer about the image (a 429 is the registry's
			// refusal to answer): the prober's last answer stands.
			continue
		}
		if !e.bad { // unreachable is the node's own: nothing to share
			answers = append(answers, keyed{key: k, im: im})
		}
	}
	for k := range touched {
		p.rechoose(k, affected)
	}
	holdHosts := map[string]bool{}
	for _, l := range limited {
		g := p.groups[l.key]
		if !g.prober(node) || l.retryAfter <= 0 {
			continue // a node that is no prober of the key does not HEAD it for anyone
		}
		until := now.Add(min(l.retryAfter, MaxHold))
		m.holds++
		if until.After(p.holds[g.host]) {
			p.holds[g.host] = until
			holdHosts[g.host] = true
		}
	}
	for _, a := range answers {
		g := p.groups[a.key]
		if !g.prober(node) {
			continue // its own view, never the other members'
		}
		g.answers[node] = newResult(node, a.im)
		p.decide(g, node, affected)
	}
	for h := range holdHosts {
		p.opts.Log.Info("registry rate-limited a node; holding its manifest checks cluster-wide", "registry", h, "node", node,
			"until", p.holds[h].UTC().Format(time.RFC3339))
		p.hostMembers(h, affected)
	}
	apply()
	p.flush()
	p.notify(affected)
}

// keyed is one image report of a message, for a key: an answer, or a 429
// with its Retry-After.
type keyed struct {
	key        Key
	retryAfter time.Duration
	im         *pb.ImageReport
}

// decide weighs the picked probers' answers of g after one of them, last,
// answered or the probers changed: all of them agree (and at least two, or
// the one there is, answered) and the key's shared result is theirs; they
// disagree and nobody's is shared, every member checking the key itself
// until they agree again. Members whose role changes are added to
// affected; a changed result is folded into the members on flush.
func (p *Planner) decide(g *group, last string, affected map[string]bool) {
	var first *result
	n, split := 0, false
	for _, name := range g.chosen[:g.picked] {
		a, ok := g.answers[name]
		if !ok {
			continue
		}
		n++
		if first == nil {
			first = &a
		} else if !agree(first.im, a.im) {
			split = true
		}
	}
	if split != g.split {
		g.split = split
		for name := range g.members {
			affected[name] = true
		}
		p.countLoad(g)
		if split {
			p.opts.Log.Info("the probers of an image disagree; every node that has it checks it itself until they agree",
				"image", imageOf(g.key), "probers", g.chosen[:g.picked])
		}
	}
	if split {
		delete(p.results, g.key)
		return
	}
	if n == 0 || n < min(2, g.picked) {
		return // pending: the last agreed result stands
	}
	r := *first
	if a, ok := g.answers[last]; ok {
		r = a
	}
	old, had := p.results[g.key]
	p.results[g.key] = r
	if !had || !sameResult(old.im, r.im) {
		p.fresh[g.key] = true
	}
}

// flush folds the keys' changed results into their members.
func (p *Planner) flush() {
	for k := range p.fresh {
		p.share(k)
	}
	clear(p.fresh)
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
	p.setLoad(g.host, d)
}

// Forget drops a node (deleted from the cluster, or no stream left).
func (p *Planner) Forget(node string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notify(p.removeLocked(node))
	p.flush()
}

func (p *Planner) removeLocked(node string) map[string]bool {
	affected := map[string]bool{}
	m := p.nodes[node]
	if m == nil {
		return affected
	}
	delete(p.nodes, node)
	touched := map[Key]bool{}
	for _, e := range m.images {
		p.leave(node, e.g.key, touched)
	}
	for k := range touched {
		p.rechoose(k, affected)
	}
	return affected
}

// leave takes node out of key's group.
func (p *Planner) leave(node string, k Key, touched map[Key]bool) {
	g := p.groups[k]
	if g == nil {
		return
	}
	delete(g.members, node)
	delete(g.answers, node)
	// A member that was no prober leaving changes no pick (but the load
	// of a key whose probers disagree: every member checks it).
	if slices.Contains(g.chosen, node) || len(g.members) <= 1 || g.split {
		touched[k] = true
	}
	if r, ok := p.results[k]; ok && r.node == node {
		delete(p.results, k) // another prober's result replaces it soon
	}
}

// rechoose recomputes key's probers and adds the nodes whose role changed
// to affected. The probers are k of the members that can reach the key's
// endpoints, plus every member that cannot (it checks the key itself
// anyway, to report its own unreachable).
func (p *Planner) rechoose(k Key, affected map[string]bool) {
	p.recomputes++
	g := p.groups[k]
	if g == nil {
		return
	}
	var next []string
	if len(g.members) > 0 {
		cands := p.scratch[:0] // reused: rechoose runs for every key a node joins
		var bad []string
		for n, c := range g.members {
			if c.bad {
				bad = append(bad, n)
			} else {
				cands = append(cands, Scored{Candidate{Node: n, Zone: p.zoneNames[c.zone]}, c.score})
			}
		}
		slices.Sort(bad)
		next, g.fellBack = pick(cands, p.opts.Replicas)
		p.scratch = cands[:0]
		g.picked = len(next)
		next = append(next, bad...)
	} else {
		g.picked, g.fellBack = 0, false
	}
	old := g.chosen
	g.chosen = next
	for _, n := range old {
		if !slices.Contains(next, n) {
			affected[n] = true
		}
	}
	for _, n := range next {
		if !slices.Contains(old, n) {
			affected[n] = true
		}
	}
	if len(g.members) == 2 { // it may have had one: the other's plan lists it now
		for n := range g.members {
			affected[n] = true
		}
	}
	// Only the picked probers' answers count.
	for n := range g.answers {
		if !g.prober(n) {
			delete(g.answers, n)
		}
	}
	if len(g.members) > 0 {
		p.decide(g, "", affected)
	}
	p.countLoad(g)
	if len(g.members) == 0 {
		delete(p.groups, k)
		delete(p.results, k)
		delete(p.fresh, k)
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
		aff := map[string]bool{}
		p.hostMembers(host, aff)
		p.notify(aff)
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

// hostMembers adds every node with a key on host to affected.
func (p *Planner) hostMembers(host string, affected map[string]bool) {
	for n, m := range p.nodes {
		if m.hosts[host] > 0 {
			affected[n] = true
		}
	}
}

// share folds key's new result into every other member whose stored
// report of it is delegated.
func (p *Planner) share(k Key) {
	g, r := p.groups[k], p.results[k]
	if g == nil || p.opts.Sink == nil {
		return
	}
	ref := imageOf(k)
	for n := range g.members {
		if n == r.node {
			continue
		}
		if m := p.nodes[n]; m == nil || !m.images[ref].delegated {
			continue
		}
		p.opts.Sink.ReplaceImage(n, ref, func(old *pb.ImageReport) *pb.ImageReport {
			if !old.GetDelegated() || KeyOf(old) != k {
				return nil
			}
			return fold(old, r)
		})
	}
}

func (p *Planner) notify(affected map[string]bool) {
	for n := range affected {
		for ch := range p.watch[n] {
			select {
			case ch <- struct{}{}:
			default:
			}
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
	im.SharedFrom = r.node
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
	m := p.nodes[node]
	if m == nil {
		return nil
	}
	now := p.opts.Now()
	refs := slices.Sorted(maps.Keys(m.images))
	// role[i]: 0 checks itself (a key no other node has), 1 assigned, 2
	// delegated.
	role := make([]byte, len(refs))
	checks := map[string]int{}
	h := fnv.New64a()
	for i, ref := range refs {
		e := m.images[ref]
		g := e.g
		switch {
		case g == nil || len(g.members) <= 1:
			checks[g.host]++
			continue
		case g.split || slices.Contains(g.chosen, node):
			role[i] = 1
			checks[g.host]++
		default:
			role[i] = 2
		}
		_, _ = h.Write([]byte{role[i]})
		_, _ = h.Write([]byte(g.key))
		_, _ = h.Write([]byte{0})
	}
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
			_, _ = fmt.Fprintf(h, "%s\x00%g\x00%d\x00", host, b.RequestsPerInterval, hold.UnixNano())
		}
	}
	phase := time.Duration(score("phase", node) % uint64(p.opts.Interval))
	_, _ = fmt.Fprintf(h, "%d", phase)
	gen := strconv.FormatUint(h.Sum64(), 16)
	if gen == since {
		return nil
	}
	pa := &pb.ProbeAssignments{Budgets: budgets, Phase: durationpb.New(phase), Generation: gen}
	for i, ref := range refs {
		switch role[i] {
		case 1:
			pa.Assigned = append(pa.Assigned, m.images[ref].g.key.proto())
		case 2:
			pa.Delegated = append(pa.Delegated, m.images[ref].g.key.proto())
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
	s := Stats{Keys: len(p.groups), Members: len(p.nodes), Load: maps.Clone(p.load), Factor: maps.Clone(p.factor),
		Holds: map[string]time.Duration{}, RateLimitRemaining: map[[2]string]float64{}, HoldsByNode: map[string]uint64{},
		Recomputes: p.recomputes}
	for h, until := range p.holds {
		if d := until.Sub(now); d > 0 {
			s.Holds[h] = d
		}
	}
	for n, m := range p.nodes {
		if m.holds > 0 {
			s.HoldsByNode[n] = m.holds
		}
		for h, v := range m.ratelimit {
			num, _, _ := strings.Cut(v, ";")
			if f, err := strconv.ParseFloat(strings.TrimSpace(num), 64); err == nil {
				s.RateLimitRemaining[[2]string{n, h}] = f
			}
		}
	}
	return s
}

// String describes the options, for the startup log.
func (o Options) String() string {
	return fmt.Sprintf("replicas=%d budgets=%v", o.Replicas, o.Budgets)
}
