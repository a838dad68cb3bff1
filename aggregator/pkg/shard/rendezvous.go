package shard

import (
	"slices"
)

// Candidate is a node that could check a key: its name and zone ("" when
// unknown).
type Candidate struct {
	Node string
	Zone string
}

// score is the rendezvous (highest random weight) score of node for key.
// FNV-1a, finished with splitmix64's mixer so that names differing in one
// character spread over the whole range. It is a pure function of its
// input: every aggregator replica computes the same scores (hash/maphash
// would not: its seed is random per process).
func score(key, node string) uint64 {
	h := newFNV()
	h.writeString(key)
	h.writeByte(0)
	h.writeString(node)
	return mix(uint64(h))
}

// mix is splitmix64's 64-bit finalizer: score's spread over the whole
// range, and a plan's generation (DirectiveSince) a sum of mixed hashes
// that does not cancel out as a sum of raw ones would for keys that differ
// in one role.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// fnv64a is FNV-1a, 64 bits (hash/fnv's New64a), over strings without
// converting them to byte slices: score runs for every image a node
// joins with, 1.5 million times when 15,000 nodes reconnect.
type fnv64a uint64

func newFNV() fnv64a { return 14695981039346656037 }

func (h *fnv64a) writeString(s string) {
	x := *h
	for i := 0; i < len(s); i++ {
		x ^= fnv64a(s[i])
		x *= 1099511628211
	}
	*h = x
}

func (h *fnv64a) writeByte(c byte) {
	*h ^= fnv64a(c)
	*h *= 1099511628211
}

// Write implements io.Writer, for fmt.Fprintf.
func (h *fnv64a) Write(b []byte) (int, error) {
	for _, c := range b {
		h.writeByte(c)
	}
	return len(b), nil
}

// Choose picks k of the candidates for key by rendezvous hashing: the
// highest-scoring candidate first, then the highest-scoring candidate of a
// zone not yet chosen, while there are such zones, then the next highest
// scores. The result is ordered by choice and depends only on key, k and
// the set of candidates (not their order), so every replica computes the
// same, and a candidate joining or leaving moves only the keys it wins or
// held.
func Choose(key string, candidates []Candidate, k int) []string {
	all := make([]Scored, len(candidates))
	for i, c := range candidates {
		all[i] = Scored{c, score(key, c.Node)}
	}
	idx, _ := pick(all, k)
	out := make([]string, len(idx))
	for i, j := range idx {
		out[i] = all[j].Node
	}
	return out
}

// Scored is a candidate with its score for a key.
type Scored struct {
	Candidate
	Score uint64
}

func better(a, b Scored) bool {
	if a.Score != b.Score {
		return a.Score > b.Score
	}
	return a.Node < b.Node
}

// pick is Choose over scored candidates: the indexes in all of the
// candidates chosen, in the order of choice. k passes of a linear scan (k
// is small), no sort. fellBack says whether a pick had to take a zone
// already chosen because no candidate of another zone was left.
func pick(all []Scored, k int) (taken []int, fellBack bool) {
	if k <= 0 || len(all) == 0 {
		return nil, false
	}
	k = min(k, len(all))
	// k is small: the indexes taken and the zones chosen are short lists,
	// not a slice as long as all and a map.
	taken = make([]int, 0, k)
	var zonesBuf [4]string
	zones := zonesBuf[:0]
	for len(taken) < k {
		best, bestAny := -1, -1
		for i, c := range all {
			if slices.Contains(taken, i) {
				continue
			}
			if bestAny < 0 || better(c, all[bestAny]) {
				bestAny = i
			}
			if (c.Zone == "" || !slices.Contains(zones, c.Zone)) && (best < 0 || better(c, all[best])) {
				best = i
			}
		}
		if best < 0 {
			best, fellBack = bestAny, true
		}
		taken = append(taken, best)
		if z := all[best].Zone; z != "" {
			zones = append(zones, z)
		}
	}
	return taken, fellBack
}
