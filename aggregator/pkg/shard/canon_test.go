package shard

import (
	"testing"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func TestCanonSharesEqualReports(t *testing.T) {
	c := newCanon()
	a := image("reg:5000/app:1", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)
	b := image("reg:5000/app:1", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)
	if c.of(a) != a || c.of(b) != a {
		t.Fatal("an equal report is not shared")
	}
	other := image("reg:5000/app:1", pb.ImageStatus_IMAGE_STATUS_ABSENT, true)
	if c.of(other) != other {
		t.Error("a different report was replaced")
	}
	used := image("reg:5000/app:1", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)
	used.Containers = []*pb.ContainerRef{{Namespace: "ns", Pod: "p", Container: "c"}}
	if c.of(used) != used {
		t.Error("a report with containers (the node's own) was shared")
	}
}

// TestIngestSharesFoldedReports: two nodes whose delegated image folds
// into the same report (no containers) store one report.
func TestIngestSharesFoldedReports(t *testing.T) {
	p := New(Options{Replicas: 1})
	p.Ingest("a", node("a", ""), true, []*pb.ImageReport{image("reg:5000/app:1", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)}, nil, func() {})
	var got []*pb.ImageReport
	for _, n := range []string{"b", "c"} {
		ims := []*pb.ImageReport{image("reg:5000/app:1", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)}
		p.Ingest(n, node(n, ""), true, ims, nil, func() {})
		got = append(got, ims[0])
	}
	if got[0] != got[1] {
		t.Errorf("b and c hold two reports:\n%v\n%v", got[0], got[1])
	}
	if got[0].GetSharedFrom() != "a" {
		t.Errorf("shared from %q, want a", got[0].GetSharedFrom())
	}
}
