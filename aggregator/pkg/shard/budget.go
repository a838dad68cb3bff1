package shard

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Budgets is the --registry-budget flag: host=N/interval pairs, comma
// separated ("/interval" may be left out). It starts as DefaultBudgets;
// a host named again overrides, N=0 removes the host's budget.
type Budgets map[string]float64

// String implements flag.Value.
func (b Budgets) String() string {
	var parts []string
	for _, h := range slices.Sorted(maps.Keys(b)) {
		parts = append(parts, fmt.Sprintf("%s=%g/interval", h, b[h]))
	}
	return strings.Join(parts, ",")
}

// Set implements flag.Value.
func (b Budgets) Set(s string) error {
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		host, n, ok := strings.Cut(item, "=")
		if !ok || host == "" {
			return fmt.Errorf("%q: want host=N/interval, e.g. docker.io=600/interval", item)
		}
		n = strings.TrimSuffix(n, "/interval")
		v, err := strconv.ParseFloat(n, 64)
		if err != nil || v < 0 {
			return fmt.Errorf("%q: N must be a number of manifest HEADs per interval, 0 or more", item)
		}
		if v == 0 {
			delete(b, host)
		} else {
			b[host] = v
		}
	}
	return nil
}
