package state

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"go.uber.org/goleak"
)

func TestSweepForgetsSilentNodes(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	s := New(time.Minute, WithClock(clock.Now), WithForgetAfter(10*time.Minute))
	s.ApplySnapshot(snapshot("old", image("a:1", available)))
	clock.Advance(6 * time.Minute)
	s.ApplySnapshot(snapshot("recent", image("a:1", available)))
	v := s.Version()
	clock.Advance(5 * time.Minute)
	if gone := s.Sweep(); len(gone) != 1 || gone[0] != "old" {
		t.Fatalf("Sweep = %v, want [old]", gone)
	}
	if s.Version() == v {
		t.Error("Version did not change when a node was forgotten")
	}
	if n := s.Nodes(); len(n) != 1 || n[0].Name != "recent" {
		t.Fatalf("nodes after sweep: %v", n)
	}
	if s.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "old"}) {
		t.Error("an update for a forgotten node was applied; want a resync")
	}
	if gone := New(time.Minute).Sweep(); gone != nil {
		t.Errorf("without WithForgetAfter Sweep = %v", gone)
	}
}

func TestAttachOneStreamPerNode(t *testing.T) {
	s := New(time.Minute)
	stopped := 0
	detach1 := s.Attach("n1", func() { stopped++ })
	detach2 := s.Attach("n1", func() { stopped += 10 })
	if stopped != 1 {
		t.Fatalf("the first stream was stopped %d times, want once", stopped)
	}
	detachOther := s.Attach("n2", nil)
	if got := s.ConnectedAgents(); got != 2 {
		t.Fatalf("ConnectedAgents = %d with three attachments for two nodes, want 2", got)
	}
	detach1() // the replaced stream ends: n1 stays connected through the second
	if got := s.ConnectedAgents(); got != 2 {
		t.Fatalf("ConnectedAgents = %d after the replaced stream ended, want 2", got)
	}
	detach2()
	detachOther()
	if got := s.ConnectedAgents(); got != 0 {
		t.Fatalf("ConnectedAgents = %d, want 0", got)
	}
}

func TestApplyUpdateWithin(t *testing.T) {
	s := New(time.Minute)
	ep := func(im *pullwatchv1.ImageReport, url string) *pullwatchv1.ImageReport {
		im.Endpoints = append(im.Endpoints, &pullwatchv1.EndpointResult{Url: url})
		return im
	}
	s.ApplySnapshot(snapshot("n1", ep(image("a:1", available), "https://r1/v2"), image("b:1", available)))
	lim := Limits{Images: 2, Endpoints: 2}
	var le *LimitError
	_, err := s.ApplyUpdateWithin(&pullwatchv1.NodeUpdate{NodeName: "n1", Upserts: []*pullwatchv1.ImageReport{image("c:1", available)}}, lim)
	if !errors.As(err, &le) || le.What != "images" || le.Have != 3 {
		t.Fatalf("third image: %v, want an images LimitError", err)
	}
	// Replacing one image by another stays within the bound.
	if known, err := s.ApplyUpdateWithin(&pullwatchv1.NodeUpdate{NodeName: "n1", Upserts: []*pullwatchv1.ImageReport{image("c:1", available)}, RemovedImages: []string{"b:1"}}, lim); !known || err != nil {
		t.Fatalf("swap: %v %v", known, err)
	}
	_, err = s.ApplyUpdateWithin(&pullwatchv1.NodeUpdate{NodeName: "n1", Upserts: []*pullwatchv1.ImageReport{
		ep(ep(image("c:1", available), "https://r2/v2"), "https://r3/v2")}}, lim)
	if !errors.As(err, &le) || le.What != "endpoints" {
		t.Fatalf("third endpoint: %v, want an endpoints LimitError", err)
	}
	if got := imageStatuses(t, s, "n1"); len(got) != 2 || got[1] != "c:1=available" {
		t.Fatalf("a refused update changed the node: %v", got)
	}
	// The bound counts the URLs the node's images name now: r1's image is
	// gone, so r3 is a second URL, not a third.
	for i, u := range []*pullwatchv1.NodeUpdate{
		{Upserts: []*pullwatchv1.ImageReport{ep(image("c:1", available), "https://r2/v2")}},
		{RemovedImages: []string{"a:1"}},
		{Upserts: []*pullwatchv1.ImageReport{ep(image("d:1", available), "https://r3/v2")}},
	} {
		u.NodeName = "n1"
		if known, err := s.ApplyUpdateWithin(u, lim); !known || err != nil {
			t.Fatalf("update %d after r1's image went: %v %v", i, known, err)
		}
	}
	if _, err = s.ApplyUpdateWithin(&pullwatchv1.NodeUpdate{NodeName: "n1", Upserts: []*pullwatchv1.ImageReport{
		ep(ep(image("d:1", available), "https://r3/v2"), "https://r1/v2")}}, lim); !errors.As(err, &le) || le.What != "endpoints" || le.Have != 3 {
		t.Fatalf("r1 back beside r2 and r3: %v, want an endpoints LimitError of 3", err)
	}
	if known, _ := s.ApplyUpdateWithin(&pullwatchv1.NodeUpdate{NodeName: "nope"}, lim); known {
		t.Error("unknown node reported known")
	}
}

func TestRunSweeperStopsWithContext(t *testing.T) {
	defer goleak.VerifyNone(t)
	clock := &fakeClock{t: time.Unix(1000, 0)}
	s := New(time.Second, WithClock(clock.Now), WithForgetAfter(time.Minute))
	s.ApplySnapshot(snapshot("n1"))
	clock.Advance(2 * time.Minute)
	forgotten := make(chan []string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.RunSweeper(ctx, 10*time.Millisecond, func(n []string) { forgotten <- n }); close(done) }()
	select {
	case got := <-forgotten:
		if len(got) != 1 || got[0] != "n1" {
			t.Errorf("forgotten %v, want [n1]", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the sweeper forgot nothing in 5s")
	}
	cancel()
	<-done
}

// TestByteBudgetCountsWhatIsHeld: 400 images of 5,000 empty containers are
// under 4 MiB on the wire (2 bytes each) but some 300 MB once decoded and
// 160 MB as the store keeps them (nodeimage.Container values); the byte
// budget counts them as held and refuses them.
func TestByteBudgetCountsWhatIsHeld(t *testing.T) {
	empty := make([]*pullwatchv1.ContainerRef, 5000)
	for i := range empty {
		empty[i] = &pullwatchv1.ContainerRef{}
	}
	var images []*pullwatchv1.ImageReport
	wire := 0
	for i := range 400 {
		im := &pullwatchv1.ImageReport{Image: fmt.Sprintf("registry.example/crowd:%d", i), Registry: "registry.example", Containers: empty}
		wire += proto.Size(im)
		images = append(images, im)
	}
	if wire > 4<<20 {
		t.Fatalf("the crowd is %d bytes on the wire: not under the budget it is meant to slip past", wire)
	}
	var le *LimitError
	if err := (Limits{Bytes: 4 << 20}).Check("node-a", images); !errors.As(err, &le) || le.What != LimitBytes {
		t.Fatalf("Check of %d bytes on the wire that hold ~160 MB: %v, want a bytes LimitError", wire, err)
	}
	if err := (Limits{Bytes: 4 << 20}).CheckEncoded("node-a", images, wire); !errors.As(err, &le) || le.What != LimitBytes {
		t.Fatalf("CheckEncoded of %d bytes on the wire that hold ~160 MB: %v, want a bytes LimitError", wire, err)
	}
}

// CheckEncoded skips measuring each report only while the message's size
// bounds them: its verdict is Check's on either side of the budget, and
// with the size not known.
func TestCheckEncodedIsCheck(t *testing.T) {
	var images []*pullwatchv1.ImageReport
	wire := 0
	for i := range 100 {
		im := image(fmt.Sprintf("registry.example/app:%d", i), available)
		im.Containers = []*pullwatchv1.ContainerRef{{Namespace: "ns", Pod: fmt.Sprintf("pod-%d", i)}}
		wire += proto.Size(im) + 3 // the tag and length of each in its message
		images = append(images, im)
	}
	held := 0
	for _, im := range images {
		held += nodeimage.HeldSizeOf(im)
	}
	for _, budget := range []int{held - 1, held, held + 1, wire, 4 << 20} {
		lim := Limits{Bytes: budget}
		want := lim.Check("node-a", images)
		for _, encoded := range []int{-1, wire} {
			got := lim.CheckEncoded("node-a", images, encoded)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("budget %d, message of %d bytes: CheckEncoded %v, Check %v", budget, encoded, got, want)
			}
		}
	}
}

// The byte budget of an update counts the node's images from a running
// sum (an update does not size the node's other images): after updates
// that add, replace and remove images, and a folded result put in, the sum
// is what sizing every image gives.
func TestHeldSumFollowsChanges(t *testing.T) {
	s := New(time.Minute)
	lim := Limits{Bytes: 1 << 20}
	withEndpoint := func(ref string, n int) *pullwatchv1.ImageReport {
		im := image(ref, available)
		for range n {
			im.Endpoints = append(im.Endpoints, &pullwatchv1.EndpointResult{Url: "https://r/v2", Latency: durationpb.New(time.Millisecond)})
		}
		return im
	}
	s.ApplySnapshot(snapshot("n1", withEndpoint("a:1", 1), withEndpoint("b:1", 2), image("c:1", available)))
	want := func(step string) {
		t.Helper()
		n := s.nodes["n1"]
		sum := 0
		for _, im := range n.sorted {
			sum += im.HeldSize()
		}
		if n.held != sum {
			t.Errorf("%s: running sum %d, sizing every image %d", step, n.held, sum)
		}
	}
	for i, u := range []*pullwatchv1.NodeUpdate{
		{Upserts: []*pullwatchv1.ImageReport{withEndpoint("d:1", 3)}},
		{Upserts: []*pullwatchv1.ImageReport{withEndpoint("a:1", 4), withEndpoint("a:1", 1)}, RemovedImages: []string{"c:1"}},
		{Upserts: []*pullwatchv1.ImageReport{withEndpoint("e:1", 1)}, RemovedImages: []string{"e:1", "b:1", "nope:1"}},
	} {
		u.NodeName = "n1"
		if _, err := s.ApplyUpdateWithin(u, lim); err != nil {
			t.Fatal(err)
		}
		want(fmt.Sprintf("update %d", i))
	}
	s.ReplaceImage("n1", "d:1", func(old *pullwatchv1.ImageReport) *pullwatchv1.ImageReport {
		out := proto.CloneOf(old)
		out.SharedFrom, out.Endpoints = "prober", nil
		return out
	})
	want("folded")
	lim.Bytes = s.nodes["n1"].held + 10
	var le *LimitError
	if _, err := s.ApplyUpdateWithin(&pullwatchv1.NodeUpdate{NodeName: "n1", Upserts: []*pullwatchv1.ImageReport{withEndpoint("f:1", 1)}}, lim); !errors.As(err, &le) || le.What != LimitBytes {
		t.Errorf("an update past the budget: %v, want a bytes LimitError", err)
	}
	want("refused")
}
