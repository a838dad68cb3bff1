package nodeimage

import (
	"testing"

	"google.golang.org/protobuf/proto"

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
	own := folded(pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "")
	own.SharedFrom = ""
	if got := tb.Keep(own); got.ImageReport != own {
		t.Error("a report of the node's own check was shared")
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
		got.HeldSize() != HeldSizeOf(im) || len(im.GetContainers()) != 1 {
		t.Errorf("Of(%v) = %v", im, got)
	}
}
