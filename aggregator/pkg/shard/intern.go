package shard

import (
	"hash/maphash"
	"unique"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// interner replaces the strings that every node holding an image repeats
// in what the store keeps per node — container namespaces, names and
// states — with one canonical copy (package unique), before the report is
// stored: 5,000 nodes running the same pods' images then keep one copy of
// each, not 500,000. The report has not been applied yet, so changing it
// is the ingest path's right (see state.Store).
//
// In front of unique.Make is a cache of canonical strings, direct-mapped
// by a hash of the string and used under the planner's lock: a report's
// strings are mostly ones another node's report brought moments before,
// and finding one there is a hash and a compare, where unique.Make is a
// concurrent map's lookup and a weak pointer made strong, for ten strings
// of each of 1.5 million images a round at 15,000 nodes. The cache holds
// its strings' handles, so that unique keeps them between garbage
// collections (it drops a value at a collection once no handle is held:
// without one, every collection would start a new copy of each string).
// It holds at most internSlots strings.
type interner struct {
	seed  maphash.Seed
	slots []unique.Handle[string]
}

const internSlots = 1 << 16

func newInterner() *interner {
	return &interner{seed: maphash.MakeSeed(), slots: make([]unique.Handle[string], internSlots)}
}

// report interns what of im's strings the store keeps per node: its
// containers' namespaces, names and states (nodeimage keeps them as
// values, one per container). The report's own strings are interned by
// nodeimage.Table, only when a report is kept as a new shared copy: most
// reports of a round equal one kept before and are dropped, and interning
// their ten strings each was a tenth of a 15,000-node round's CPU.
func (c *interner) report(im *pb.ImageReport) {
	for _, ct := range im.Containers {
		ct.Namespace = c.u(ct.Namespace)
		ct.Container = c.u(ct.Container)
		ct.State = c.u(ct.State)
	}
}

// u is s's canonical copy.
func (c *interner) u(s string) string {
	if s == "" {
		return s
	}
	slot := &c.slots[maphash.String(c.seed, s)&(internSlots-1)]
	if *slot != (unique.Handle[string]{}) {
		if v := slot.Value(); v == s {
			return v
		}
	}
	h := unique.Make(s)
	*slot = h
	return h.Value()
}
