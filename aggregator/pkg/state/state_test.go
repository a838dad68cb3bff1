package state

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// fakeClock is a settable clock for WithClock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func image(ref string, st pullwatchv1.ImageStatus) *pullwatchv1.ImageReport {
	return &pullwatchv1.ImageReport{Image: ref, Status: st}
}

func snapshot(nodeName string, images ...*pullwatchv1.ImageReport) *pullwatchv1.NodeSnapshot {
	return &pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: nodeName}, Images: images}
}

// imageStatuses flattens a node's images to "ref=status" for comparison.
func imageStatuses(t *testing.T, s *Store, nodeName string) []string {
	t.Helper()
	for _, n := range s.Nodes() {
		if n.Name != nodeName {
			continue
		}
		out := []string{}
		for _, im := range n.Images {
			out = append(out, im.GetImage()+"="+im.GetStatus().Word())
		}
		return out
	}
	t.Fatalf("node %q not in store", nodeName)
	return nil
}

const (
	available   = pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE
	absent      = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
	unreachable = pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE
)

func TestApply(t *testing.T) {
	tests := []struct {
		name    string
		apply   func(s *Store) bool // returns what the last Apply returned
		want    []string
		wantOK  bool
		nodeSet []string
	}{
		{
			name: "snapshot",
			apply: func(s *Store) bool {
				s.ApplySnapshot(snapshot("a", image("b:1", available), image("a:1", absent)))
				return true
			},
			want:    []string{"a:1=absent", "b:1=available"},
			wantOK:  true,
			nodeSet: []string{"a"},
		},
		{
			name: "second snapshot replaces the whole node",
			apply: func(s *Store) bool {
				s.ApplySnapshot(snapshot("a", image("a:1", absent), image("b:1", available)))
				s.ApplySnapshot(snapshot("a", image("c:1", unreachable)))
				return true
			},
			want:    []string{"c:1=unreachable"},
			wantOK:  true,
			nodeSet: []string{"a"},
		},
		{
			name: "snapshot of another node leaves the first alone",
			apply: func(s *Store) bool {
				s.ApplySnapshot(snapshot("a", image("a:1", absent)))
				s.ApplySnapshot(snapshot("b", image("b:1", available)))
				return true
			},
			want:    []string{"a:1=absent"},
			wantOK:  true,
			nodeSet: []string{"a", "b"},
		},
		{
			name: "update upserts and removes",
			apply: func(s *Store) bool {
				s.ApplySnapshot(snapshot("a", image("a:1", absent), image("b:1", available), image("c:1", available)))
				return s.ApplyUpdate(&pullwatchv1.NodeUpdate{
					NodeName:      "a",
					Upserts:       []*pullwatchv1.ImageReport{image("a:1", available), image("d:1", unreachable)},
					RemovedImages: []string{"b:1", "not-there:1"},
				})
			},
			want:    []string{"a:1=available", "c:1=available", "d:1=unreachable"},
			wantOK:  true,
			nodeSet: []string{"a"},
		},
		{
			name: "update for unknown node is refused and changes nothing",
			apply: func(s *Store) bool {
				s.ApplySnapshot(snapshot("a", image("a:1", absent)))
				return s.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "b", Upserts: []*pullwatchv1.ImageReport{image("x:1", absent)}})
			},
			want:    []string{"a:1=absent"},
			wantOK:  false,
			nodeSet: []string{"a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(time.Minute)
			if ok := tt.apply(s); ok != tt.wantOK {
				t.Errorf("last apply returned %v, want %v", ok, tt.wantOK)
			}
			if got := imageStatuses(t, s, "a"); !slices.Equal(got, tt.want) {
				t.Errorf("images of node a = %v, want %v", got, tt.want)
			}
			var names []string
			for _, n := range s.Nodes() {
				names = append(names, n.Name)
			}
			if !slices.Equal(names, tt.nodeSet) {
				t.Errorf("nodes = %v, want %v", names, tt.nodeSet)
			}
		})
	}
}

func TestViewIsNotChangedByLaterUpdates(t *testing.T) {
	s := New(time.Minute)
	s.ApplySnapshot(snapshot("a", image("a:1", absent), image("b:1", available)))
	before := s.Nodes()[0].Images
	s.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "a", RemovedImages: []string{"a:1"}})
	if len(before) != 2 || before[0].GetImage() != "a:1" {
		t.Fatalf("earlier view changed: %v", before)
	}
}

func TestStaleness(t *testing.T) {
	const staleAfter = 3 * time.Minute
	tests := []struct {
		name      string
		elapsed   time.Duration // since the last report
		wantStale bool
	}{
		{"just reported", 0, false},
		{"exactly stale-after", staleAfter, false},
		{"past stale-after", staleAfter + time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
			s := New(staleAfter, WithClock(clock.Now))
			s.ApplySnapshot(snapshot("a"))
			reported := clock.Now()
			clock.Advance(tt.elapsed)

			n := s.Nodes()[0]
			if n.Stale != tt.wantStale {
				t.Errorf("Stale = %v, want %v", n.Stale, tt.wantStale)
			}
			if !n.LastReport.Equal(reported) {
				t.Errorf("LastReport = %v, want %v", n.LastReport, reported)
			}
		})
	}
}

func TestUpdateRefreshesLastReport(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	s := New(time.Minute, WithClock(clock.Now))
	s.ApplySnapshot(snapshot("a"))
	clock.Advance(50 * time.Second)
	s.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "a"})
	clock.Advance(50 * time.Second)
	if n := s.Nodes()[0]; n.Stale {
		t.Errorf("node stale 50s after an update with stale-after 1m; last report %v, now %v", n.LastReport, clock.Now())
	}
}

func TestOpenStreams(t *testing.T) {
	s := New(time.Minute)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(s.StreamOpened)
	}
	wg.Wait()
	s.StreamClosed()
	if got := s.OpenStreams(); got != 9 {
		t.Errorf("OpenStreams = %d, want 9", got)
	}
	if got := s.ConnectedAgents(); got != 0 {
		t.Errorf("ConnectedAgents = %d with no stream attached to a node, want 0", got)
	}
}

// TestConcurrentUse is for -race: writers and readers at once.
func TestConcurrentUse(t *testing.T) {
	s := New(time.Minute)
	var wg sync.WaitGroup
	for i := range 4 {
		name := string(rune('a' + i))
		wg.Go(func() {
			for range 100 {
				s.ApplySnapshot(snapshot(name, image("x:1", available)))
				s.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: name, Upserts: []*pullwatchv1.ImageReport{image("y:1", absent)}})
			}
		})
		wg.Go(func() {
			for range 100 {
				for _, n := range s.Nodes() {
					for _, im := range n.Images {
						_ = im.GetStatus()
					}
				}
			}
		})
	}
	wg.Wait()
}

func TestForget(t *testing.T) {
	s := New(time.Minute)
	s.ApplySnapshot(snapshot("a", image("x", available)))
	s.ApplySnapshot(snapshot("b", image("x", available)))
	if !s.Forget("a") {
		t.Error("Forget(a) = false for a known node")
	}
	if s.Forget("a") {
		t.Error("Forget(a) = true the second time")
	}
	if got := len(s.Nodes()); got != 1 {
		t.Errorf("%d nodes after Forget, want 1", got)
	}
	// The agent's next update is answered with a resync.
	if s.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "a"}) {
		t.Error("ApplyUpdate for a forgotten node succeeded")
	}
}

func TestOnChange(t *testing.T) {
	s := New(time.Minute)
	changes := 0
	s.OnChange(func() { changes++ })
	s.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: "a"}, Images: []*pullwatchv1.ImageReport{{Image: "x:1"}}})
	s.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "a"}) // nothing changes: no call
	s.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "a", RemovedImages: []string{"x:1"}})
	s.Forget("a")
	if changes != 3 {
		t.Errorf("%d calls, want 3 (snapshot, update that removed an image, forget)", changes)
	}
}

// updated is the node's images with an update's upserts put in (the last
// of one reference wins) and then its removed references taken out, in
// reference order: held here to that plain model over random updates with
// repeated, replaced and removed references.
func TestUpdatedIsUpsertsThenRemovals(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ref := func() string { return fmt.Sprintf("reg/app-%02d:1", rng.IntN(40)) }
	for round := range 2000 {
		model := map[string]*pullwatchv1.ImageReport{}
		for range rng.IntN(30) {
			im := image(ref(), available)
			model[im.GetImage()] = im
		}
		var sorted []nodeimage.Image
		for _, r := range slices.Sorted(maps.Keys(model)) {
			sorted = append(sorted, nodeimage.Of(model[r]))
		}
		u := &pullwatchv1.NodeUpdate{NodeName: "n1"}
		for range rng.IntN(6) {
			u.Upserts = append(u.Upserts, image(ref(), absent))
		}
		for range rng.IntN(4) {
			u.RemovedImages = append(u.RemovedImages, ref())
		}
		for _, im := range u.Upserts {
			model[im.GetImage()] = im
		}
		for _, r := range u.RemovedImages {
			delete(model, r)
		}
		got := updated(sorted, u, nodeimage.All(u.Upserts...))
		want := slices.Sorted(maps.Keys(model))
		if len(got) != len(want) {
			t.Fatalf("round %d: %d images, want %d", round, len(got), len(want))
		}
		for i, im := range got {
			if im.GetImage() != want[i] || im.ImageReport != model[want[i]] {
				t.Fatalf("round %d: image %d is %s (%p), want %s (%p)", round, i, im.GetImage(), im.ImageReport, want[i], model[want[i]])
			}
		}
	}
}
