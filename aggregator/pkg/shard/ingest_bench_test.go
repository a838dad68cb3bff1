package shard

import (
	"context"
	"fmt"
	"hash/crc32"
	"runtime/pprof"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// BenchmarkIngestSnapshots is what a round of snapshots costs the
// aggregator under the planner's lock, decoding aside: the planner with
// the real store as its sink and each snapshot applied to it, as ingest
// does. Every node first sends its snapshot (checking everything), then,
// its delegations known, a round of snapshots with its delegated images
// marked and its probed ones checked again (new check times, so every
// shared result is new), as after an aggregator restart. pwload measures
// the same through gRPC (docs/benchmarks.md, issue 21).
func BenchmarkIngestSnapshots(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(size.String(), func(b *testing.B) {
			images := float64(size.nodes * size.perNode)
			for range b.N {
				b.StopTimer()
				st := state.New(time.Hour)
				p := New(Options{Replicas: 2, Budgets: DefaultBudgets(), Sink: st})
				reports := func(n int, at time.Time, delegated map[string]bool) *pb.NodeSnapshot {
					name := fmt.Sprintf("node-%d", n)
					ims := size.images(n)
					for j, im := range ims {
						im.CheckedAt = timestamppb.New(at)
						sum := crc32.ChecksumIEEE([]byte(im.GetImage())) // the image's, on every node
						im.Digest = fmt.Sprintf("sha256:%064x", sum)
						im.ImageId = fmt.Sprintf("sha256:%064x", sum+1)
						im.RepoDigests = []string{im.GetImage() + "@" + im.GetDigest()}
						im.Endpoints[0].Latency = durationpb.New(3 * time.Millisecond)
						im.Endpoints[0].CheckedAt = im.CheckedAt
						im.Delegated = delegated[pb.ProbeKeyOf(im)]
						if j%3 != 0 {
							im.InUse = true
							im.Containers = []*pb.ContainerRef{{Namespace: "ns", Pod: fmt.Sprintf("app-%d-%d", j, n), PodUid: fmt.Sprintf("uid-%d-%d", j, n), Container: "app", State: "CONTAINER_RUNNING"}}
						}
					}
					return &pb.NodeSnapshot{Node: node(name, fmt.Sprintf("z%d", n%3)), Images: ims}
				}
				ingest := func(s *pb.NodeSnapshot) {
					p.Ingest(s.GetNode().GetName(), s.GetNode(), true, s.GetImages(), nil, func() { st.ApplySnapshot(s) })
				}
				t0 := time.Now()
				for n := range size.nodes {
					ingest(reports(n, t0, nil))
				}
				snaps := make([]*pb.NodeSnapshot, size.nodes)
				for n := range size.nodes {
					delegated := map[string]bool{}
					for _, k := range p.DirectiveSince(fmt.Sprintf("node-%d", n), "").GetDelegated() {
						delegated[k.KeyString()] = true
					}
					snaps[n] = reports(n, t0.Add(time.Minute), delegated)
				}
				own := 0
				for _, s := range snaps {
					for _, im := range s.GetImages() {
						if !im.GetDelegated() {
							own++
						}
					}
				}
				b.ReportMetric(float64(own)/images, "own/image")
				b.StartTimer()
				start := time.Now()
				// Labelled, for a profile of the round alone: go test
				// -cpuprofile, then pprof -tagfocus phase=round.
				pprof.Do(context.Background(), pprof.Labels("phase", "round"), func(context.Context) {
					for _, s := range snaps {
						ingest(s)
					}
				})
				b.ReportMetric(float64(time.Since(start).Nanoseconds())/images, "round-ns/image")
			}
		})
	}
}
