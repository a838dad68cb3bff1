package shard

import (
	"weak"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/protobuf/proto"
)

// canon keeps one copy of identical folded reports. A delegated image
// folded with the shared result is the same report on every node that has
// it, unless the node's own part differs: the containers that use it (then
// it is left alone), its since time or digest. At 5,000 nodes × 100 images
// the images no container uses are a third of all, and their reports
// alone were 48 MB of the state (docs/benchmarks.md).
//
// Reports in the state are never modified (state.Store), so nodes can
// share one. The table holds weak pointers: a report no node holds any
// more is collected, and its entry swept.
type canon struct {
	buf   []byte
	table map[string]weak.Pointer[pb.ImageReport]
	added int
}

func newCanon() *canon { return &canon{table: map[string]weak.Pointer[pb.ImageReport]{}} }

// of returns the canonical copy of im: an earlier report equal to it, or
// im itself, remembered for the next. Reports with containers are their
// node's own and returned as they are.
func (c *canon) of(im *pb.ImageReport) *pb.ImageReport {
	if len(im.GetContainers()) > 0 {
		return im
	}
	b, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(c.buf[:0], im)
	if err != nil {
		return im
	}
	c.buf = b
	if w, ok := c.table[string(b)]; ok {
		if v := w.Value(); v != nil {
			return v
		}
	}
	c.table[string(b)] = weak.Make(im)
	if c.added++; c.added > len(c.table) {
		// As many added since the last sweep as the table holds: sweep
		// the entries whose report was collected (amortized O(1)).
		for k, w := range c.table {
			if w.Value() == nil {
				delete(c.table, k)
			}
		}
		c.added = 0
	}
	return im
}
