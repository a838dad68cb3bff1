package shard

import (
	"hash/maphash"
	"unique"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// interner replaces the strings that every node holding an image repeats —
// reference, ids and digests, registry, reasons, credential source,
// endpoint URLs, container namespaces and states — with one canonical copy
// (package unique), before the report is stored: 5,000 nodes with the same
// 2,000 images then keep about 2,000 copies of each, not 500,000. The
// report has not been applied yet, so changing it is the ingest path's
// right (see state.Store).
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

// report interns im's strings.
func (c *interner) report(im *pb.ImageReport) {
	im.Image = c.u(im.Image)
	im.ImageId = c.u(im.ImageId)
	im.Digest = c.u(im.Digest)
	im.Reason = c.u(im.Reason)
	im.Registry = c.u(im.Registry)
	im.RegistryDigest = c.u(im.RegistryDigest)
	im.CredentialSource = c.u(im.CredentialSource)
	for i, d := range im.RepoDigests {
		im.RepoDigests[i] = c.u(d)
	}
	for _, e := range im.Endpoints {
		e.Url = c.u(e.Url)
		e.Reason = c.u(e.Reason)
	}
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
