// Package state holds what the aggregator knows about each node: the latest
// image reports an agent sent, when it last reported, and how many agent
// streams are open. Everything else (metrics, the status page) reads from
// here through Nodes.
package state

import (
	"slices"
	"strings"
	"sync"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Store is the in-memory state of all nodes. It is safe for concurrent use.
//
// Ownership: the Apply methods keep the messages they are given (no deep
// copy) and never modify them afterwards; NodeViews hand the same pointers
// out. Callers therefore must not modify a message after applying it, nor
// anything reached through a NodeView. gRPC allocates a fresh message per
// Recv, so the ingest path satisfies this for free, and a scrape of 50,000
// images does not have to clone 50,000 protos.
type Store struct {
	staleAfter time.Duration
	now        func() time.Time

	mu        sync.RWMutex
	nodes     map[string]*node
	connected int
}

type node struct {
	info       *pullwatchv1.Node
	images     map[string]*pullwatchv1.ImageReport
	sorted     []*pullwatchv1.ImageReport // images ordered by reference; replaced, never modified in place
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

// New returns an empty Store in which a node is stale once it has not
// reported for longer than staleAfter.
func New(staleAfter time.Duration, opts ...Option) *Store {
	s := &Store{
		staleAfter: staleAfter,
		now:        time.Now,
		nodes:      make(map[string]*node),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// ApplySnapshot replaces everything known about the snapshot's node. The
// snapshot must already be validated (non-empty node name, unique images).
func (s *Store) ApplySnapshot(snap *pullwatchv1.NodeSnapshot) {
	images := make(map[string]*pullwatchv1.ImageReport, len(snap.GetImages()))
	for _, im := range snap.GetImages() {
		images[im.GetImage()] = im
	}
	n := &node{
		info:       snap.GetNode(),
		images:     images,
		sorted:     sortedImages(images),
		observedAt: timeOf(snap.GetObservedAt()),
		interval:   snap.GetInterval().AsDuration(),
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	n.lastReport = s.now()
	s.nodes[snap.GetNode().GetName()] = n
}

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
	for _, im := range u.GetUpserts() {
		n.images[im.GetImage()] = im
	}
	for _, ref := range u.GetRemovedImages() {
		delete(n.images, ref)
	}
	// A fresh slice rather than an in-place edit: NodeViews handed out
	// earlier may still be iterating the old one without the lock.
	n.sorted = sortedImages(n.images)
	n.lastReport = s.now()
	if u.GetObservedAt() != nil {
		n.observedAt = u.GetObservedAt().AsTime()
	}
	return true
}

// ReplaceImage replaces the node's report of ref with fn(old) when the
// node has ref and fn returns non-nil (probe sharding folds another node's
// result into this node's view this way; see aggregator/pkg/shard). The
// node's freshness is unchanged. It reports whether the node has ref.
func (s *Store) ReplaceImage(name, ref string, fn func(old *pullwatchv1.ImageReport) *pullwatchv1.ImageReport) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[name]
	if !ok {
		return false
	}
	old, ok := n.images[ref]
	if !ok {
		return false
	}
	im := fn(old)
	if im == nil {
		return true
	}
	n.images[ref] = im
	// A copy, not an in-place edit: NodeViews handed out earlier may still
	// be iterating the old slice.
	i, found := slices.BinarySearchFunc(n.sorted, ref, func(a *pullwatchv1.ImageReport, r string) int { return strings.Compare(a.GetImage(), r) })
	if found {
		sorted := slices.Clone(n.sorted)
		sorted[i] = im
		n.sorted = sorted
	}
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
	return ok
}

// timeOf is AsTime, except that an unset timestamp is the zero time rather
// than 1970-01-01.
func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

func sortedImages(images map[string]*pullwatchv1.ImageReport) []*pullwatchv1.ImageReport {
	out := make([]*pullwatchv1.ImageReport, 0, len(images))
	for _, im := range images {
		out = append(out, im)
	}
	slices.SortFunc(out, func(a, b *pullwatchv1.ImageReport) int { return strings.Compare(a.GetImage(), b.GetImage()) })
	return out
}

// StreamOpened and StreamClosed count open agent streams.
func (s *Store) StreamOpened() { s.addConnected(1) }

// StreamClosed is the counterpart of StreamOpened.
func (s *Store) StreamClosed() { s.addConnected(-1) }

func (s *Store) addConnected(d int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected += d
}

// ConnectedAgents returns the number of open agent streams.
func (s *Store) ConnectedAgents() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.connected
}

// NodeView is a read-only view of one node at the time Nodes was called.
type NodeView struct {
	Name string
	// Info is the node description from the latest snapshot.
	Info *pullwatchv1.Node
	// Images is ordered by reference. Shared with the store: do not modify.
	Images []*pullwatchv1.ImageReport
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
