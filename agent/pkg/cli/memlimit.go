package cli

import (
	"os"
	"runtime/debug"
)

// gcPercent is the agent's GOGC unless the environment sets one: its live
// heap is a few MB, and GOGC's default 100 lets the heap reach twice that
// between collections. 70 took the footprint benchmark's average RSS from
// 32.3 to 30.4 MiB for 4.45 instead of 3.8 millicores; 50 gave 29.9 MiB
// for 5.06 millicores, past the 5 millicore target (docs/benchmarks.md).
const gcPercent = 70

// setGCPercent sets the garbage collector's target to gcPercent, unless
// GOGC is set.
func setGCPercent() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(gcPercent)
	}
}
