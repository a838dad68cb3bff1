// Package state holds what the aggregator knows about each node: the latest
// image reports an agent sent, when it last reported, which nodes have an
// agent stream attached, and how many streams are open. Everything else
// (metrics, the status page) reads from here through Nodes.
package state

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Store is the in-memory state of all nodes. It is safe for concurrent use.
//
// Ownership: the Apply methods keep the messages they are given (no deep
// copy) and never modify them afterwards, but for taking an image
// report's containers out (nodeimage.Table.Keep) before they keep it;
// NodeViews hand the same pointers out. Callers therefore must not modify
// or read a message after applying it, nor modify anything reached
// through a NodeView. gRPC allocates a fresh message per Recv, so the
// ingest path satisfies this for free, and a scrape of 50,000 images does
// not have to clone 50,000 protos.
type Store struct {
	staleAfter  time.Duration
	forgetAfter time.Duration // 0: never
	now         func() time.Time

	mu      sync.RWMutex
	nodes   map[string]*node
	streams int                    // open streams, identified or not
	agents  map[string]*attachment // the live stream of each node
	// version counts changes of what Nodes returns, so that readers can
	// cache what they compute from it; onChange is told of each.
	version  uint64
	onChange []func()
	// shared keeps one copy of the folded reports nodes have in common.
	shared *nodeimage.Table
}

// OnChange registers f to be called after every change of what Nodes
// returns (when Version changes). f runs under the store's lock: it must
// return at once and must not call the store. A reader caching what it
// computed from Nodes drops it there, so that the cache does not keep the
// images the change replaced in memory.
func (s *Store) OnChange(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onChange = append(s.onChange, f)
}

// changed counts a change; s.mu is held.
func (s *Store) changed() {
	s.version++
	for _, f := range s.onChange {
		f()
	}
}

// attachment is the one live stream of a node.
type attachment struct {
	stop func()
}

type node struct {
	info *pullwatchv1.Node
	// sorted are the node's images ordered by reference; replaced, never
	// modified in place. There is no map by reference beside it: lookups
	// search it, and at 5,000 nodes × 100 images a map would hold 30 MB.
	sorted []nodeimage.Image
	// held is the sum of sorted's HeldSize, kept up to date by each change
	// once an update's byte budget needed it (-1 until then), so that an
	// update of one image does not size the node's hundred others.
	held int
	// urls are, sorted, the endpoint URLs the node's images name, or more
	// (nil until an update's endpoint bound needed them): an update adds
	// its images' URLs and never takes one out, so that its bound is
	// checked against its own images' URLs, not its node's hundred others
	// (endpointsWithin). A snapshot starts the node afresh.
	urls       []string
	lastReport time.Time
	observedAt time.Time
	interval   time.Duration
}

// Option configures a Store.
type Option func(*Store)

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option {
	return func(s *Store) { s.now = now }
}

// WithForgetAfter makes Sweep drop a node that has not reported for longer
// than d (0: never), so that the names of nodes that went away, or were
// never real, do not accumulate.
func WithForgetAfter(d time.Duration) Option {
	return func(s *Store) { s.forgetAfter = d }
}

// New returns an empty Store in which a node is stale once it has not
// reported for longer than staleAfter.
func New(staleAfter time.Duration, opts ...Option) *Store {
	s := &Store{
		staleAfter: staleAfter,
		now:        time.Now,
		nodes:      make(map[string]*node),
		agents:     make(map[string]*attachment),
		shared:     nodeimage.NewTable(),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// ApplySnapshot replaces everything known about the snapshot's node. The
// snapshot must already be validated (non-empty node name, unique images).
func (s *Store) ApplySnapshot(snap *pullwatchv1.NodeSnapshot) {
	n := &node{
		info:       snap.GetNode(),
		sorted:     s.keepSorted(snap.GetImages()),
		held:       -1,
		observedAt: timeOf(snap.GetObservedAt()),
		interval:   snap.GetInterval().AsDuration(),
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	n.lastReport = s.now()
	s.nodes[snap.GetNode().GetName()] = n
	s.changed()
}

// Limits bound what the store keeps for one node; 0 is no bound.
type Limits struct {
	// Images is the most images a node may have.
	Images int
	// Endpoints is the most distinct registry endpoint URLs a node's
	// images may name together.
	Endpoints int
	// Bytes is the most bytes a node's image reports may take: as
	// encoded, plus what each container, endpoint and repo digest costs in
	// memory beyond its encoding (nodeimage.Image.HeldSize).
	Bytes int
}

// What a LimitError is about.
const (
	LimitImages    = "images"
	LimitEndpoints = "endpoints"
	LimitBytes     = "bytes"
)

// LimitError is a report that would take a node over a Limits bound.
type LimitError struct {
	What     string // LimitImages, LimitEndpoints or LimitBytes
	Have     int
	Max      int
	NodeName string
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("node %s would have %d %s, more than the aggregator's limit of %d per node", e.NodeName, e.Have, e.What, e.Max)
}

// Check returns a *LimitError when images, all of one node, exceed lim.
func (lim Limits) Check(nodeName string, images []*pullwatchv1.ImageReport) error {
	return check(lim, nodeName, images, nodeimage.HeldSizeOf)
}

// CheckEncoded is Check for images that arrived in one message of encoded
// bytes (-1: not known). Each report's encoding is part of the message's,
// so while the message's size plus what the reports hold beyond their
// encoding is within lim.Bytes, no report is measured: measuring each
// (proto.Size walks every field) was a fiftieth of the CPU of a round of
// snapshots at 15,000 nodes, for a bound a snapshot is far below.
func (lim Limits) CheckEncoded(nodeName string, images []*pullwatchv1.ImageReport, encoded int) error {
	if lim.Bytes > 0 && encoded >= 0 {
		bound := encoded
		for _, im := range images {
			bound += nodeimage.HeldBeyondEncoding(im)
		}
		if bound <= lim.Bytes {
			lim.Bytes = 0
		}
	}
	return check(lim, nodeName, images, nodeimage.HeldSizeOf)
}

// check is Check of images as received (*pullwatchv1.ImageReport) or as
// kept (nodeimage.Image), heldSize the size of one.
func check[I interface {
	GetEndpoints() []*pullwatchv1.EndpointResult
}](lim Limits, nodeName string, images []I, heldSize func(I) int) error {
	if lim.Images > 0 && len(images) > lim.Images {
		return &LimitError{What: LimitImages, Have: len(images), Max: lim.Images, NodeName: nodeName}
	}
	if lim.Bytes > 0 {
		size := 0
		for _, im := range images {
			if size += heldSize(im); size > lim.Bytes {
				return &LimitError{What: LimitBytes, Have: size, Max: lim.Bytes, NodeName: nodeName}
			}
		}
	}
	if lim.Endpoints <= 0 {
		return nil
	}
	urls := map[string]struct{}{}
	for _, im := range images {
		for _, e := range im.GetEndpoints() {
			urls[e.GetUrl()] = struct{}{}
			if len(urls) > lim.Endpoints {
				return &LimitError{What: LimitEndpoints, Have: len(urls), Max: lim.Endpoints, NodeName: nodeName}
			}
		}
	}
	return nil
}

// ApplyUpdateWithin is ApplyUpdate, except that an update that would take
// the node over lim changes nothing and returns a *LimitError. known is
// false, and nothing changes, when the node has no snapshot in the store.
func (s *Store) ApplyUpdateWithin(u *pullwatchv1.NodeUpdate, lim Limits) (known bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[u.GetNodeName()]
	if !ok {
		return false, nil
	}
	upserts := s.keep(u.GetUpserts())
	next := updated(n.sorted, u, upserts)
	if lim.Images > 0 && len(next) > lim.Images {
		return true, &LimitError{What: LimitImages, Have: len(next), Max: lim.Images, NodeName: u.GetNodeName()}
	}
	held := -1
	if lim.Bytes > 0 {
		held = n.heldSize() + heldDelta(n.sorted, next, u)
		if held > lim.Bytes {
			return true, &LimitError{What: LimitBytes, Have: held, Max: lim.Bytes, NodeName: u.GetNodeName()}
		}
	}
	var urls []string
	if lim.Endpoints > 0 {
		if urls, err = n.endpointsWithin(u.GetNodeName(), lim.Endpoints, next, upserts); err != nil {
			return true, err
		}
	}
	s.applyUpdated(n, u, next)
	n.held, n.urls = held, urls
	return true, nil
}

// endpointsWithin returns, sorted, the endpoint URLs of next (n's images
// once upserts are in), or more of them, or a *LimitError when next names
// more distinct URLs than max. The URLs n had before, with upserts' added,
// are enough while they are within max; past it, next's own are counted.
// At 15,000 nodes counting every image's URLs for each update of one
// image was a seventh of a round of updates' CPU (docs/benchmarks.md).
func (n *node) endpointsWithin(name string, max int, next, upserts []nodeimage.Image) ([]string, error) {
	if urls := n.urls; urls != nil {
		cloned := false
		for _, im := range upserts {
			for _, e := range im.GetEndpoints() {
				if i, ok := slices.BinarySearch(urls, e.GetUrl()); !ok {
					if !cloned {
						urls, cloned = slices.Clone(urls), true // n.urls stays as it is if the update is refused
					}
					urls = slices.Insert(urls, i, e.GetUrl())
				}
			}
		}
		if len(urls) <= max {
			return urls, nil
		}
	}
	var urls []string
	for _, im := range next {
		for _, e := range im.GetEndpoints() {
			urls = append(urls, e.GetUrl())
		}
	}
	slices.Sort(urls)
	urls = append([]string{}, slices.Compact(urls)...) // as long as it needs to be: the node keeps it
	if len(urls) > max {
		return nil, &LimitError{What: LimitEndpoints, Have: len(urls), Max: max, NodeName: name}
	}
	return urls, nil
}

// heldSize is the sum of n's images' HeldSize, computed once.
func (n *node) heldSize() int {
	if n.held < 0 {
		n.held = 0
		for _, im := range n.sorted {
			n.held += im.HeldSize()
		}
	}
	return n.held
}

// heldDelta is what next, updated(sorted, u, ...), holds more than sorted
// (HeldSize): the images u replaces or removes out, its upserts kept in.
// Both lists are ordered by reference; only u's references are sized.
func heldDelta(sorted, next []nodeimage.Image, u *pullwatchv1.NodeUpdate) int {
	refs := make(map[string]bool, len(u.GetUpserts())+len(u.GetRemovedImages()))
	for _, ref := range u.GetRemovedImages() {
		refs[ref] = true
	}
	for _, im := range u.GetUpserts() {
		refs[im.GetImage()] = true
	}
	d := 0
	for ref := range refs {
		if i, ok := slices.BinarySearchFunc(sorted, ref, byRef); ok {
			d -= sorted[i].HeldSize()
		}
		if i, ok := slices.BinarySearchFunc(next, ref, byRef); ok {
			d += next[i].HeldSize()
		}
	}
	return d
}

func byRef(a nodeimage.Image, ref string) int { return strings.Compare(a.GetImage(), ref) }

// ApplyUpdate upserts the update's images (matched by reference) and
// deletes its removed images. It returns false, changing nothing, when the
// node has no snapshot in the store: the agent must then resend a snapshot.
func (s *Store) ApplyUpdate(u *pullwatchv1.NodeUpdate) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[u.GetNodeName()]
	if !ok {
		return false
	}
	s.applyUpdate(n, u)
	return true
}

// applyUpdate applies u to n; s.mu is held.
func (s *Store) applyUpdate(n *node, u *pullwatchv1.NodeUpdate) {
	// A fresh slice rather than an in-place edit: NodeViews handed out
	// earlier may still be iterating the old one without the lock.
	s.applyUpdated(n, u, updated(n.sorted, u, s.keep(u.GetUpserts())))
}

// applyUpdated makes next, updated(n.sorted, u), n's images; s.mu is held.
func (s *Store) applyUpdated(n *node, u *pullwatchv1.NodeUpdate, next []nodeimage.Image) {
	n.sorted = next
	n.held, n.urls = -1, nil // ApplyUpdateWithin sets them after
	n.lastReport = s.now()
	if u.GetObservedAt() != nil {
		n.observedAt = u.GetObservedAt().AsTime()
	}
	if len(u.GetUpserts())+len(u.GetRemovedImages()) > 0 {
		s.changed()
	}
}

// ReplaceImage replaces the node's report of ref with fn(old) when the
// node has ref and fn returns non-nil (probe sharding folds another node's
// result into this node's view this way; see aggregator/pkg/shard). fn
// is given the report without the node's containers when the node shares
// it (nodeimage.Table), and what it returns is the store's: the node keeps
// its containers. The node's freshness is unchanged. It reports whether
// the node has ref.
func (s *Store) ReplaceImage(name, ref string, fn func(old *pullwatchv1.ImageReport) *pullwatchv1.ImageReport) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[name]
	if !ok {
		return false
	}
	i, found := slices.BinarySearchFunc(n.sorted, ref, byRef)
	if !found {
		return false
	}
	old := n.sorted[i]
	im := fn(old.ImageReport)
	if im == nil || im == old.ImageReport {
		return true // unchanged (and a shared report is never the store's to change)
	}
	kept := s.shared.Keep(im)
	kept.Containers = old.Containers
	for _, e := range kept.GetEndpoints() {
		if _, ok := slices.BinarySearch(n.urls, e.GetUrl()); !ok {
			n.urls = nil // a URL the node's did not name (a fold names the old report's): counted afresh when needed
			break
		}
	}
	// A copy, not an in-place edit: NodeViews handed out earlier may still
	// be iterating the old slice.
	sorted := slices.Clone(n.sorted)
	sorted[i] = kept
	n.sorted = sorted
	if n.held >= 0 {
		n.held += kept.HeldSize() - old.HeldSize()
	}
	s.changed() // what Nodes returns changed: the analyzer diagnoses again
	return true
}

// Forget drops everything known about a node (deleted from the cluster).
// It reports whether the node was known. An agent still streaming for it
// is asked to resync on its next update, which brings the node back.
func (s *Store) Forget(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.nodes[name]
	delete(s.nodes, name)
	if ok {
		s.changed()
	}
	return ok
}

// Sweep drops every node that has not reported for longer than the
// store's forget-after duration and returns their names. Nothing is
// dropped without WithForgetAfter.
func (s *Store) Sweep() []string {
	if s.forgetAfter <= 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var gone []string
	for name, n := range s.nodes {
		if now.Sub(n.lastReport) > s.forgetAfter {
			delete(s.nodes, name)
			gone = append(gone, name)
		}
	}
	if len(gone) > 0 {
		s.changed()
	}
	slices.Sort(gone)
	return gone
}

// RunSweeper calls Sweep every interval until ctx ends, handing what it
// dropped to forgotten (which may be nil).
func (s *Store) RunSweeper(ctx context.Context, interval time.Duration, forgotten func([]string)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if gone := s.Sweep(); len(gone) > 0 && forgotten != nil {
				forgotten(gone)
			}
		}
	}
}

// Version changes whenever what Nodes returns changes other than by the
// passing of time (a node's freshness and staleness): a new snapshot, an
// update that changed images, a node forgotten. Readers that cache what
// they compute from Nodes key the cache on it and on time.
func (s *Store) Version() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.version
}

// timeOf is AsTime, except that an unset timestamp is the zero time rather
// than 1970-01-01.
func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

// keep is images as the store keeps them (nodeimage.Table.Keep), in a
// new slice.
func (s *Store) keep(images []*pullwatchv1.ImageReport) []nodeimage.Image {
	out := make([]nodeimage.Image, len(images))
	for i, im := range images {
		out[i] = s.shared.Keep(im)
	}
	return out
}

// keepSorted is a snapshot's images as the store keeps them (keep),
// ordered by reference; of images with the same reference, the last one
// given is kept. The message's slice is not reordered: its pointers are
// sorted (cheaper to move than kept images) and the duplicates skipped
// before they are kept.
func (s *Store) keepSorted(images []*pullwatchv1.ImageReport) []nodeimage.Image {
	ims := lastOfEach(slices.Clone(images), (*pullwatchv1.ImageReport).GetImage)
	out := make([]nodeimage.Image, len(ims))
	for i, im := range ims {
		out[i] = s.shared.Keep(im)
	}
	return out
}

// lastOfEach sorts s stably by ref and keeps, of the items of one
// reference, the last given: a later report of a reference replaces an
// earlier one. s is reordered and compacted in place.
func lastOfEach[T any](s []T, ref func(T) string) []T {
	slices.SortStableFunc(s, func(a, b T) int { return strings.Compare(ref(a), ref(b)) })
	out := s[:0]
	for i, v := range s {
		if i+1 < len(s) && ref(s[i+1]) == ref(v) {
			continue
		}
		out = append(out, v)
	}
	return out
}

// updated returns a new sorted list: sorted (ordered by reference) with
// u's upserts (kept: upserts, in u's order) put in and its removed
// references taken out.
func updated(sorted []nodeimage.Image, u *pullwatchv1.NodeUpdate, upserts []nodeimage.Image) []nodeimage.Image {
	if len(u.GetUpserts())+len(u.GetRemovedImages()) == 0 {
		return sorted
	}
	// The changes, by reference: the last upsert of each, and each
	// removed one (an upsert listed and also removed in one update is
	// removed, as the map version applied upserts first, then removals).
	gone := slices.Sorted(slices.Values(u.GetRemovedImages()))
	type change struct {
		ref string
		im  *nodeimage.Image // nil: removed
	}
	changes := make([]change, 0, len(gone)+len(upserts))
	for i := range upserts {
		if _, removed := slices.BinarySearch(gone, upserts[i].GetImage()); !removed {
			changes = append(changes, change{upserts[i].GetImage(), &upserts[i]})
		}
	}
	for _, ref := range gone {
		changes = append(changes, change{ref: ref})
	}
	changes = lastOfEach(changes, func(c change) string { return c.ref })
	// Each change is found by a binary search of what follows the last
	// one, and the images between are copied as they are: an update of one
	// image compares a few references, not its node's hundred (at 15,000
	// nodes, those hundred references' memory was an eighth of a round of
	// updates' CPU: docs/benchmarks.md).
	out := make([]nodeimage.Image, 0, len(sorted)+len(upserts))
	from := 0
	for _, c := range changes {
		i, found := slices.BinarySearchFunc(sorted[from:], c.ref, byRef)
		out = append(out, sorted[from:from+i]...)
		if from += i; found {
			from++ // replaced or removed
		}
		if c.im != nil {
			out = append(out, *c.im)
		}
	}
	return slices.Clip(append(out, sorted[from:]...))
}

// StreamOpened and StreamClosed count open agent streams, whether or not
// they have said which node they report yet.
func (s *Store) StreamOpened() { s.addStreams(1) }

// StreamClosed is the counterpart of StreamOpened.
func (s *Store) StreamClosed() { s.addStreams(-1) }

func (s *Store) addStreams(d int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams += d
}

// OpenStreams returns the number of open agent streams.
func (s *Store) OpenStreams() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.streams
}

// Attach records that a stream now reports node: the node's one live
// stream. A stream already attached for the node is replaced: its stop is
// called (outside the store's lock). The returned detach ends the
// attachment, unless a later stream has replaced it already; call it when
// the stream ends.
func (s *Store) Attach(node string, stop func()) (detach func()) {
	a := &attachment{stop: stop}
	s.mu.Lock()
	prev := s.agents[node]
	s.agents[node] = a
	s.mu.Unlock()
	if prev != nil && prev.stop != nil {
		prev.stop()
	}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.agents[node] == a {
			delete(s.agents, node)
		}
	}
}

// ConnectedAgents returns the number of nodes with a live agent stream:
// nodes, not streams, so that idle or duplicate streams do not count.
func (s *Store) ConnectedAgents() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.agents)
}

// NodeView is a read-only view of one node at the time Nodes was called.
type NodeView struct {
	Name string
	// Info is the node description from the latest snapshot.
	Info *pullwatchv1.Node
	// Images is ordered by reference. Shared with the store: do not modify.
	Images []nodeimage.Image
	// LastReport is when the aggregator last accepted a message for the node.
	LastReport time.Time
	// ObservedAt is when the agent finished the round last reported.
	ObservedAt time.Time
	// Interval is the agent's probe interval from the latest snapshot.
	Interval time.Duration
	// Stale is true when the node has not reported for longer than the
	// store's stale-after duration.
	Stale bool
}

// Nodes returns every known node, ordered by name.
func (s *Store) Nodes() []NodeView {
	s.mu.RLock()
	defer s.mu.RUnlock()
	now := s.now()
	out := make([]NodeView, 0, len(s.nodes))
	for name, n := range s.nodes {
		out = append(out, NodeView{
			Name:       name,
			Info:       n.info,
			Images:     n.sorted,
			LastReport: n.lastReport,
			ObservedAt: n.observedAt,
			Interval:   n.interval,
			Stale:      now.Sub(n.lastReport) > s.staleAfter,
		})
	}
	slices.SortFunc(out, func(a, b NodeView) int { return strings.Compare(a.Name, b.Name) })
	return out
}
