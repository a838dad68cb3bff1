package state

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pullwatch/pullwatch/aggregator/pkg/shard"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func sharedImage(ref string, st pb.ImageStatus, delegated bool, pod string) *pb.ImageReport {
	im := &pb.ImageReport{Image: ref, Registry: "reg:5000", Status: st, Delegated: delegated, CredentialSource: "anonymous",
		Digest: "sha256:aaa", InUse: pod != "", Endpoints: []*pb.EndpointResult{{Url: "http://reg:5000/v2", Status: st}}}
	if pod != "" {
		im.Containers = []*pb.ContainerRef{{Namespace: "ns", Pod: pod, PodUid: "uid-" + pod, Container: "c", State: "CONTAINER_RUNNING"}}
	}
	return im
}

func viewOf(t *testing.T, s *Store, name string) NodeView {
	t.Helper()
	for _, v := range s.Nodes() {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no node %s", name)
	return NodeView{}
}

// Nodes whose delegated image folds into the same result store one
// report between them, whether or not containers use it, and each keeps
// its own containers; a result folded in later (ReplaceImage) keeps them
// too.
func TestStoreSharesFoldedReports(t *testing.T) {
	s := New(time.Minute)
	p := shard.New(shard.Options{Replicas: 1, Sink: s})
	const ref = "reg:5000/app:1"
	ingest := func(name string, im *pb.ImageReport) {
		snap := &pb.NodeSnapshot{Node: &pb.Node{Name: name}, Images: []*pb.ImageReport{im}}
		p.Ingest(name, snap.GetNode(), true, snap.GetImages(), nil, func() { s.ApplySnapshot(snap) })
	}
	ingest("a", sharedImage(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false, ""))
	for _, n := range []string{"b", "c"} {
		ingest(n, sharedImage(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true, "pod-"+n))
	}
	for _, n := range []string{"d", "e"} {
		ingest(n, sharedImage(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true, ""))
	}
	b, c := viewOf(t, s, "b").Images[0], viewOf(t, s, "c").Images[0]
	if b.ImageReport != c.ImageReport {
		t.Errorf("b and c hold two reports:\n%v\n%v", b.ImageReport, c.ImageReport)
	}
	if b.GetSharedFrom() != "a" || !b.GetInUse() {
		t.Errorf("b's report %v, want shared from a, in use", b.ImageReport)
	}
	if b.GetContainers()[0].Pod != "pod-b" || c.GetContainers()[0].Pod != "pod-c" {
		t.Errorf("containers b %v, c %v", b.GetContainers(), c.GetContainers())
	}
	if d, e := viewOf(t, s, "d").Images[0], viewOf(t, s, "e").Images[0]; d.ImageReport != e.ImageReport || d.ImageReport == b.ImageReport || len(d.GetContainers()) != 0 {
		t.Errorf("d %v and e %v: want one report, not in use, without containers", d, e)
	}

	// A new result folded into b and c (as the planner's share does).
	absent := func(old *pb.ImageReport) *pb.ImageReport {
		out := proto.Clone(old).(*pb.ImageReport)
		out.Status = pb.ImageStatus_IMAGE_STATUS_ABSENT
		return out
	}
	for _, n := range []string{"b", "c"} {
		if !s.ReplaceImage(n, ref, absent) {
			t.Fatalf("%s has no %s", n, ref)
		}
	}
	b, c = viewOf(t, s, "b").Images[0], viewOf(t, s, "c").Images[0]
	if b.ImageReport != c.ImageReport || b.GetStatus() != pb.ImageStatus_IMAGE_STATUS_ABSENT {
		t.Errorf("after the fold: b %v, c %v, want one absent report", b.ImageReport, c.ImageReport)
	}
	if b.GetContainers()[0].Pod != "pod-b" || c.GetContainers()[0].Pod != "pod-c" {
		t.Errorf("after the fold: containers b %v, c %v", b.GetContainers(), c.GetContainers())
	}
}
