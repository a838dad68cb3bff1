package nodeimage

import (
	"runtime"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// TestHeldSizeCoversDecoding: what HeldSize counts for a report of empty
// repeated elements (the cheapest on the wire, the dearest in memory) is at
// least what the decoded report holds as the store keeps it (Table.Keep:
// the containers as values; the heap after a collection), so the per-node
// byte budget bounds the aggregator's memory and not only the bytes it
// received. HeldSizeOf, what ingest checks before keeping, counts the same.
func TestHeldSizeCoversDecoding(t *testing.T) {
	const n = 20_000
	for name, im := range map[string]*pb.ImageReport{
		"containers":   {Image: "registry.example/a:1", Containers: make([]*pb.ContainerRef, n)},
		"endpoints":    {Image: "registry.example/a:1", Endpoints: make([]*pb.EndpointResult, n)},
		"repo digests": {Image: "registry.example/a:1", RepoDigests: make([]string, n)},
	} {
		for i := range im.Containers {
			im.Containers[i] = &pb.ContainerRef{}
		}
		for i := range im.Endpoints {
			im.Endpoints[i] = &pb.EndpointResult{}
		}
		wire, err := proto.Marshal(im)
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		checked, got := func() (int, Image) {
			decoded := &pb.ImageReport{}
			if err := proto.Unmarshal(wire, decoded); err != nil {
				t.Fatal(err)
			}
			return HeldSizeOf(decoded), NewTable().Keep(decoded) // the decoded containers are garbage now
		}()
		runtime.GC()
		runtime.ReadMemStats(&after)
		allocated := int(after.HeapAlloc) - int(before.HeapAlloc)
		held := got.HeldSize()
		t.Logf("%s: %d bytes on the wire, %d held after decoding and keeping, HeldSize %d", name, len(wire), allocated, held)
		if held < allocated {
			t.Errorf("%s: HeldSize %d < %d bytes held after decoding %d bytes", name, held, allocated, len(wire))
		}
		if checked != held {
			t.Errorf("%s: HeldSizeOf the decoded report %d, HeldSize of it kept %d", name, checked, held)
		}
		runtime.KeepAlive(got)
	}
}
