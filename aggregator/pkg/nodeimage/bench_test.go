package nodeimage

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// foldedReports are n reports of distinct images, copies of each, folded
// as the probe planner folds them (aggregator/pkg/shard foldInto): the
// copies of an image share its prober's endpoints slice and check time.
func foldedReports(distinct, copies int) []*pb.ImageReport {
	out := make([]*pb.ImageReport, 0, distinct*copies)
	now := time.Now()
	for i := range distinct {
		reg := fmt.Sprintf("reg-%02d.example:5000", i%60)
		checked := timestamppb.New(now.Add(time.Duration(i) * time.Millisecond))
		eps := []*pb.EndpointResult{{Url: "https://" + reg + "/v2", Role: pb.EndpointRole_ENDPOINT_ROLE_UPSTREAM,
			Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE, Latency: durationpb.New(3 * time.Millisecond), CheckedAt: checked, HttpStatus: 200}}
		for range copies {
			out = append(out, &pb.ImageReport{Image: fmt.Sprintf("%s/team-%d/app-%d:v%d", reg, i%37, i, i%5),
				ImageId: fmt.Sprintf("sha256:%064x", i), Digest: fmt.Sprintf("sha256:%064x", i+1<<20),
				InUse: true, Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE, Reason: "manifest found at https://" + reg + "/v2",
				CheckedAt: checked, Registry: reg, CredentialSource: "anonymous", Endpoints: eps,
				Delegated: true, SharedFrom: fmt.Sprintf("node-%05d", i)})
		}
	}
	return out
}

// BenchmarkTableKeep is Keep of folded reports (no containers), most of
// them equal to one kept before: the store's ingest of a delegated image.
//
//	cd aggregator && go test -run '^$' -bench TableKeep -benchmem ./pkg/nodeimage/
func BenchmarkTableKeep(b *testing.B) {
	reports := foldedReports(2000, 5)
	t := NewTable()
	b.ResetTimer()
	for i := range b.N {
		t.Keep(reports[i%len(reports)])
	}
}
