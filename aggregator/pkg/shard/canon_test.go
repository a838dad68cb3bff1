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
