package stream

import (
	"sort"
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func img(name string, status pb.ImageStatus, latencyMs int64) *pb.ImageReport {
	return &pb.ImageReport{
		Image:     name,
		Status:    status,
		CheckedAt: timestamppb.Now(),
		Endpoints: []*pb.EndpointResult{{Url: "http://r/v2", Status: status, Latency: durationpb.New(0), CheckedAt: timestamppb.Now()}},
	}
}

func TestDiff(t *testing.T) {
	avail, absent := pb.ImageStatus_IMAGE_STATUS_AVAILABLE, pb.ImageStatus_IMAGE_STATUS_ABSENT
	prev := &pb.NodeSnapshot{Node: &pb.Node{Name: "n1"}, Images: []*pb.ImageReport{img("a", avail, 1), img("b", avail, 1), img("c", avail, 1)}}
	tests := []struct {
		name             string
		cur              []*pb.ImageReport
		upserts, removed []string
	}{
		{"quiet: only times and latencies changed", []*pb.ImageReport{img("a", avail, 9), img("b", avail, 9), img("c", avail, 9)}, nil, nil},
		{"status change", []*pb.ImageReport{img("a", avail, 1), img("b", absent, 1), img("c", avail, 1)}, []string{"b"}, nil},
		{"added and removed", []*pb.ImageReport{img("a", avail, 1), img("d", avail, 1)}, []string{"d"}, []string{"b", "c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := &pb.NodeSnapshot{Node: &pb.Node{Name: "n1"}, Images: tt.cur, ObservedAt: timestamppb.Now()}
			u := Diff(prev, cur)
			var ups []string
			for _, im := range u.Upserts {
				ups = append(ups, im.Image)
			}
			sort.Strings(u.RemovedImages)
			if u.NodeName != "n1" || u.ObservedAt == nil || join(ups) != join(tt.upserts) || join(u.RemovedImages) != join(tt.removed) {
				t.Fatalf("update %v upserts=%v removed=%v", u.NodeName, ups, u.RemovedImages)
			}
		})
	}
}

func join(s []string) string {
	out := ""
	for _, x := range s {
		out += x + ","
	}
	return out
}
