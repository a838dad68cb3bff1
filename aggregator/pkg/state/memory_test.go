package state

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pullwatch/pullwatch/aggregator/pkg/shard"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// BenchmarkStoreMemory is what the aggregator keeps per node (the store
// and the probe planner, after a round of snapshots with the delegated
// images marked, as pwload sends them): 100 images per node, 40 distinct
// images per 100 nodes over 20 registries in 3 zones, two thirds of them
// used by a container (docs/benchmarks.md, issue 21).
//
//	cd aggregator && go test -run '^$' -bench StoreMemory -benchtime=1x ./pkg/state/
func BenchmarkStoreMemory(b *testing.B) {
	const nodes, perNode = 2000, 100
	distinct := nodes * 40 / 100
	for range b.N {
		before, objectsBefore := heap()
		s := New(time.Minute)
		p := shard.New(shard.Options{Replicas: 2, Sink: s})
		ingest := func(n int, delegated map[string]bool) {
			snap := loadSnapshot(n, perNode, distinct, delegated)
			p.Ingest(snap.GetNode().GetName(), snap.GetNode(), true, snap.GetImages(), nil, func() { s.ApplySnapshot(snap) })
		}
		for n := range nodes {
			ingest(n, nil)
		}
		for n := range nodes {
			del := map[string]bool{}
			for _, k := range p.DirectiveSince(fmt.Sprintf("node-%05d", n), "").GetDelegated() {
				del[k.KeyString()] = true
			}
			ingest(n, del)
		}
		after, objectsAfter := heap()
		b.ReportMetric(float64(after-before)/nodes, "B/node")
		b.ReportMetric(float64(after-before)/(nodes*perNode), "B/image")
		// What the garbage collector marks on every cycle.
		b.ReportMetric(float64(objectsAfter-objectsBefore)/(nodes*perNode), "objects/image")
		runtime.KeepAlive(s)
		runtime.KeepAlive(p)
	}
}

// heap is the live heap's bytes and objects.
func heap() (bytes, objects uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.HeapObjects
}

// loadSnapshot is node n's snapshot as pwload's simulated agent sends it.
func loadSnapshot(n, perNode, distinct int, delegated map[string]bool) *pb.NodeSnapshot {
	name := fmt.Sprintf("node-%05d", n)
	snap := &pb.NodeSnapshot{Node: &pb.Node{Name: name, AgentVersion: "bench", Os: "linux", Architecture: "amd64",
		Labels:  map[string]string{shard.ZoneLabel: fmt.Sprintf("zone-%d", n%3)},
		Runtime: &pb.Runtime{Name: "containerd", Version: "1.7.0", ApiVersion: "v1", Endpoint: "unix:///run/containerd/containerd.sock"}},
		ObservedAt: timestamppb.Now(), Interval: durationpb.New(time.Minute)}
	seen := map[int]bool{}
	for j := 0; len(snap.Images) < perNode; j++ {
		idx := (n*7919 + j*104729) % distinct
		if seen[idx] {
			continue
		}
		seen[idx] = true
		reg := fmt.Sprintf("reg-%02d.example:5000", idx%20)
		now := timestamppb.Now()
		im := &pb.ImageReport{Image: fmt.Sprintf("%s/team-%d/app-%d:v%d", reg, idx%37, idx, idx%5),
			ImageId: fmt.Sprintf("sha256:%064x", idx), Digest: fmt.Sprintf("sha256:%064x", idx+1<<20),
			InUse: idx%3 != 0, Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE, Reason: "manifest found at https://" + reg + "/v2",
			CheckedAt: now, Registry: reg, CredentialSource: "anonymous",
			Endpoints: []*pb.EndpointResult{{Url: "https://" + reg + "/v2", Role: pb.EndpointRole_ENDPOINT_ROLE_UPSTREAM,
				Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE, Latency: durationpb.New(3 * time.Millisecond), CheckedAt: now, HttpStatus: 200}}}
		if im.InUse {
			im.Containers = []*pb.ContainerRef{{Namespace: fmt.Sprintf("ns-%d", idx%50), Pod: fmt.Sprintf("app-%d-%s", idx, name),
				PodUid: fmt.Sprintf("uid-%d-%s", idx, name), Container: "app", State: "CONTAINER_RUNNING"}}
		}
		im.Delegated = delegated[pb.ProbeKeyOf(im)]
		snap.Images = append(snap.Images, im)
	}
	return snap
}

// BenchmarkApplyUpdate is a round of updates as pwload sends them: every
// node of 2,000 (100 images each, folded as the store keeps them) sends
// one changed image (another node's: new to it, or replacing its own),
// under the bounds the aggregator's defaults set. The cost is per update.
//
//	cd aggregator && go test -run '^$' -bench ApplyUpdate -benchmem ./pkg/state/
func BenchmarkApplyUpdate(b *testing.B) {
	const nodes, perNode = 2000, 100
	distinct := nodes * 40 / 100
	s := New(time.Minute)
	p := shard.New(shard.Options{Replicas: 2, Sink: s})
	for n := range nodes {
		snap := loadSnapshot(n, perNode, distinct, nil)
		p.Ingest(snap.GetNode().GetName(), snap.GetNode(), true, snap.GetImages(), nil, func() { s.ApplySnapshot(snap) })
	}
	// Node n's updates are node n+1's images, one by one.
	updates := make([][]*pb.ImageReport, nodes)
	for n := range nodes {
		updates[n] = loadSnapshot((n+1)%nodes, perNode, distinct, nil).GetImages()
	}
	lim := Limits{Images: 10_000, Endpoints: 256, Bytes: 4 << 20}
	b.ResetTimer()
	for i := range b.N {
		n := i % nodes
		name := fmt.Sprintf("node-%05d", n)
		im := updates[n][(i/nodes)%perNode]
		u := &pb.NodeUpdate{NodeName: name, Upserts: []*pb.ImageReport{proto.CloneOf(im)}}
		if _, err := s.ApplyUpdateWithin(u, lim); err != nil {
			b.Fatal(err)
		}
	}
}
