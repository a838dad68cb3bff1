package shard

import (
	"hash/fnv"
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
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(node))
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
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
	out, _ := pick(all, k)
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

// pick is Choose over scored candidates: k passes of a linear scan (k is
// small), no sort. fellBack says whether a pick had to take a zone already
// chosen because no candidate of another zone was left.
func pick(all []Scored, k int) (out []string, fellBack bool) {
	if k <= 0 || len(all) == 0 {
		return nil, false
	}
	k = min(k, len(all))
	out = make([]string, 0, k)
	// k is small: the indexes taken and the zones chosen are short lists,
	// not a slice as long as all and a map.
	taken := make([]int, 0, k)
	zones := make([]string, 0, k)
	for len(out) < k {
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
		out = append(out, all[best].Node)
	}
	return out, fellBack
}
