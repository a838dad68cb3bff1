package nodeimage

import (
	"runtime/debug"
	"testing"
	"time"
	"unsafe"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func folded(st pb.ImageStatus, pod string) *pb.ImageReport {
	im := &pb.ImageReport{Image: "reg:5000/app:1", Registry: "reg:5000", Status: st, Delegated: true, SharedFrom: "prober",
		InUse: pod != "", Endpoints: []*pb.EndpointResult{{Url: "http://reg:5000/v2", Status: st}}}
	if pod != "" {
		im.Containers = []*pb.ContainerRef{{Namespace: "ns", Pod: pod, PodUid: "uid-" + pod, Container: "c", State: "CONTAINER_RUNNING"}}
	}
	return im
}

func TestTableSharesEqualReports(t *testing.T) {
	tb := NewTable()
	a, b := folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, ""), folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "")
	if tb.Keep(a).ImageReport != a || tb.Keep(b).ImageReport != a {
		t.Fatal("an equal report is not shared")
	}
	if other := folded(pb.ImageStatus_IMAGE_STATUS_ABSENT, ""); tb.Keep(other).ImageReport != other {
		t.Error("a different report was replaced")
	}
}

// The reports folded from one result (one endpoints slice) on nodes with
// different digests of the image are kept apart, each shared with the
// nodes that have its digest.
func TestTableKeepsAResultsFoldsApart(t *testing.T) {
	tb := NewTable()
	shared := folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "").Endpoints
	fold := func(digest string) *pb.ImageReport {
		im := folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "")
		im.Digest, im.Endpoints = digest, shared
		return im
	}
	var kept []*pb.ImageReport
	for _, d := range []string{"sha256:1", "sha256:2", "sha256:1", "sha256:3", "sha256:2", "sha256:3"} {
		im := tb.Keep(fold(d)).ImageReport
		if im.GetDigest() != d {
			t.Fatalf("digest %s kept as %s", d, im.GetDigest())
		}
		kept = append(kept, im)
	}
	if kept[0] != kept[2] || kept[1] != kept[4] || kept[3] != kept[5] || kept[0] == kept[1] || kept[1] == kept[3] {
		t.Errorf("folds of one result not shared by digest: %p", kept)
	}
}

// own is a node's own check of the image: its endpoint's latency, the
// check times and rate-limit answers are the node's.
func own(pod string, latency time.Duration) *pb.ImageReport {
	im := folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, pod)
	im.SharedFrom, im.Delegated = "", false
	im.CheckedAt = timestamppb.New(time.Unix(1700000000, int64(latency)))
	im.Endpoints[0].Latency = durationpb.New(latency)
	im.Endpoints[0].CheckedAt = im.CheckedAt
	im.Endpoints[0].RatelimitRemaining = "100;w=21600"
	im.Endpoints[0].RetryAfter = durationpb.New(latency)
	return im
}

// Nodes' own checks of an image that differ only in what is the node's
// alone share one report; each node keeps its containers and latencies,
// and the message given to Keep keeps its endpoints (the planner may hold
// it as a prober's answer).
func TestTableSharesOwnChecks(t *testing.T) {
	tb := NewTable()
	a, b := own("pod-a", 3*time.Millisecond), own("pod-b", 5*time.Millisecond)
	ka, kb := tb.Keep(a), tb.Keep(b)
	if ka.ImageReport != kb.ImageReport {
		t.Fatal("own checks equal but for the node's own fields are not shared")
	}
	if ka.ImageReport == a || ka.GetCheckedAt() != nil || ka.GetEndpoints()[0].GetLatency() != nil ||
		ka.GetEndpoints()[0].GetRatelimitRemaining() != "" || ka.GetEndpoints()[0].GetRetryAfter() != nil {
		t.Errorf("the shared copy keeps a node's own fields: %v", ka.ImageReport)
	}
	if a.GetEndpoints()[0].GetLatency().AsDuration() != 3*time.Millisecond || a.GetEndpoints()[0].GetRatelimitRemaining() == "" {
		t.Errorf("Keep changed the message's endpoints: %v", a.GetEndpoints())
	}
	for _, c := range []struct {
		got  Image
		pod  string
		want time.Duration
	}{{ka, "pod-a", 3 * time.Millisecond}, {kb, "pod-b", 5 * time.Millisecond}} {
		if l, ok := c.got.EndpointLatency(0); !ok || l != c.want {
			t.Errorf("%s: latency %v %v, want %v", c.pod, l, ok, c.want)
		}
		if got := c.got.GetContainers()[0].Pod; got != c.pod {
			t.Errorf("%s: containers %v", c.pod, c.got.GetContainers())
		}
		if l := c.got.Proto().GetEndpoints()[0].GetLatency().AsDuration(); l != c.want {
			t.Errorf("%s: Proto's latency %v", c.pod, l)
		}
	}
	if other := own("pod-c", time.Millisecond); func() bool {
		other.Status = pb.ImageStatus_IMAGE_STATUS_ABSENT
		return tb.Keep(other).ImageReport == ka.ImageReport
	}() {
		t.Error("own checks with different answers share a report")
	}
	unmeasured := own("pod-d", 0)
	unmeasured.Endpoints[0].Latency = nil
	if _, ok := tb.Keep(unmeasured).EndpointLatency(0); ok {
		t.Error("an endpoint without a latency has one")
	}
}

// Two nodes' folded reports that differ only in the pods that use the
// image share the report and keep their own containers.
func TestTableKeepsContainersApart(t *testing.T) {
	tb := NewTable()
	a, b := folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "pod-a"), folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "pod-b")
	wantA, wantB := proto.Clone(a).(*pb.ImageReport), proto.Clone(b).(*pb.ImageReport)
	ka, kb := tb.Keep(a), tb.Keep(b)
	if ka.ImageReport != kb.ImageReport {
		t.Fatal("reports equal but for their containers are not shared")
	}
	for _, c := range []struct {
		got  Image
		want *pb.ImageReport
	}{{ka, wantA}, {kb, wantB}} {
		if got := c.got.GetContainers()[0].Pod; got != c.want.GetContainers()[0].GetPod() {
			t.Errorf("containers of %s: pod %s", c.want.GetContainers()[0].GetPod(), got)
		}
		if !proto.Equal(c.got.Proto(), c.want) {
			t.Errorf("Proto:\n%v\nwant\n%v", c.got.Proto(), c.want)
		}
		if c.got.Size() != proto.Size(c.want) {
			t.Errorf("Size %d, want %d", c.got.Size(), proto.Size(c.want))
		}
	}
	if unused := tb.Keep(folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "")); unused.ImageReport == ka.ImageReport {
		t.Error("a report no container uses (in_use false) shares with one in use")
	}
}

func TestOfKeepsTheReport(t *testing.T) {
	im := folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "pod")
	got := Of(im)
	if got.ImageReport != im || !proto.Equal(got.Proto(), im) || got.Size() != proto.Size(im) || len(got.GetContainers()) != 1 ||
		got.HeldSize()+heldPerLatency*len(im.GetEndpoints()) != HeldSizeOf(im) || len(im.GetContainers()) != 1 {
		t.Errorf("Of(%v) = %v", im, got)
	}
}

// The reports kept as new shared copies hold one copy of the strings they
// repeat (the registry here), not the messages' own.
func TestTableInternsKeptReports(t *testing.T) {
	// unique drops a value at a collection once no handle holds it.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	tb := NewTable()
	reg := func() string { return string([]byte("registry.example:5000")) } // a new copy each time
	a, b := own("pod-a", time.Millisecond), own("pod-b", time.Millisecond)
	a.Image, a.Registry = "registry.example:5000/a:1", reg()
	b.Image, b.Registry = "registry.example:5000/b:1", reg()
	ka, kb := tb.Keep(a), tb.Keep(b)
	if ka.ImageReport == kb.ImageReport {
		t.Fatal("two images' reports shared")
	}
	if unsafe.StringData(ka.GetRegistry()) != unsafe.StringData(kb.GetRegistry()) {
		t.Error("the kept reports hold two copies of one registry name")
	}
}
