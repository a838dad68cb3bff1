package nodeimage

import (
	"sync"
	"time"
	"weak"

	"google.golang.org/protobuf/proto"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Table keeps one copy of identical folded reports. A delegated image
// folded with its probers' shared result (SharedFrom set) is the same
// report on every node that has it, but for the containers that use it
// (kept apart, in Image.Containers), and the node's own since time or
// digest. At 5,000 nodes × 100 images the images no container uses are a
// third of all, and their reports alone were 48 MB of the state; with the
// containers apart the other two thirds share too (docs/benchmarks.md,
// issue 21).
//
// Reports in the state are never modified (state.Store), so nodes can
// share one. The table holds weak pointers: a report no node holds any
// more is collected, and its entry swept. Safe for concurrent use.
type Table struct {
	mu    sync.Mutex
	buf   []byte
	table map[string]weak.Pointer[pb.ImageReport]
	added int
}

// NewTable returns an empty Table.
func NewTable() *Table { return &Table{table: map[string]weak.Pointer[pb.ImageReport]{}} }

// Keep is im as the store keeps it: its containers taken out (im is
// changed: it must be the caller's to change, a message not yet applied)
// and the rest shared with an equal report kept before. A folded report
// is shared as it is. A report of the node's own check is shared without
// what is the node's alone: its endpoints' latencies are kept beside it
// (Image.Latencies), and the check times and rate-limit answers (the
// report's and its endpoints' checked_at, ratelimit_remaining,
// retry_after), which no reader of the state looks at once the probe
// planner has read the message, are left out of the shared copy.
func (t *Table) Keep(im *pb.ImageReport) Image {
	cs := im.Containers
	im.Containers = nil
	if im.GetSharedFrom() != "" {
		return Image{ImageReport: t.of(im), Containers: cs}
	}
	return Image{ImageReport: t.of(nodeless(im)), Containers: cs, Latencies: latencies(im.GetEndpoints())}
}

// nodeless is a copy of a node's own report without what is the node's
// alone (see Keep). im is not changed: the probe planner may hold it as a
// prober's answer.
func nodeless(im *pb.ImageReport) *pb.ImageReport {
	out := proto.CloneOf(im)
	out.CheckedAt = nil
	for _, e := range out.Endpoints {
		e.Latency, e.CheckedAt, e.RatelimitRemaining, e.RetryAfter = nil, nil, "", nil
	}
	return out
}

// latencies are the endpoints' latencies by index (-1: none measured), or
// nil when there are no endpoints.
func latencies(eps []*pb.EndpointResult) []time.Duration {
	if len(eps) == 0 {
		return nil
	}
	out := make([]time.Duration, len(eps))
	for i, e := range eps {
		out[i] = -1
		if l := e.GetLatency(); l != nil {
			out[i] = l.AsDuration()
		}
	}
	return out
}

// of returns the canonical copy of im: an earlier report equal to it, or
// im itself, remembered for the next.
func (t *Table) of(im *pb.ImageReport) *pb.ImageReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(t.buf[:0], im)
	if err != nil {
		return im
	}
	t.buf = b
	if w, ok := t.table[string(b)]; ok {
		if v := w.Value(); v != nil {
			return v
		}
	}
	t.table[string(b)] = weak.Make(im)
	if t.added++; t.added > len(t.table) {
		// As many added since the last sweep as the table holds: sweep
		// the entries whose report was collected (amortized O(1)).
		for k, w := range t.table {
			if w.Value() == nil {
				delete(t.table, k)
			}
		}
		t.added = 0
	}
	return im
}
