package shard

import (
	"hash/fnv"
	"slices"
	"strings"
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
	if k <= 0 {
		return nil
	}
	type scored struct {
		Candidate
		s uint64
	}
	all := make([]scored, len(candidates))
	for i, c := range candidates {
		all[i] = scored{c, score(key, c.Node)}
	}
	slices.SortFunc(all, func(a, b scored) int {
		switch {
		case a.s > b.s:
			return -1
		case a.s < b.s:
			return 1
		}
		return strings.Compare(a.Node, b.Node)
	})
	if k >= len(all) {
		out := make([]string, len(all))
		for i, c := range all {
			out[i] = c.Node
		}
		return out
	}
	out := make([]string, 0, k)
	taken := make([]bool, len(all))
	zones := map[string]bool{}
	// First pass: one per zone, best score first.
	for i, c := range all {
		if len(out) == k {
			break
		}
		if c.Zone != "" && zones[c.Zone] {
			continue
		}
		if c.Zone != "" {
			zones[c.Zone] = true
		}
		out = append(out, c.Node)
		taken[i] = true
	}
	// Then fill by score.
	for i, c := range all {
		if len(out) == k {
			break
		}
		if !taken[i] {
			out = append(out, c.Node)
		}
	}
	return out
}
