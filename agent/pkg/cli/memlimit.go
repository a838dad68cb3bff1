package cli

import (
	"log/slog"
	"math"
	"os"
	"runtime/debug"

	"github.com/KimMachineGun/automemlimit/memlimit"

	"github.com/pullwatch/pullwatch/pkg/logging"
)

// setMemoryLimit gives the Go runtime a soft memory limit of 90% of the
// container's (cgroup) memory limit, unless GOMEMLIMIT is set, as the
// aggregator does: near the DaemonSet's limit the garbage collector works
// harder instead of letting the heap double past it. Outside a memory
// limited cgroup it changes nothing. AUTOMEMLIMIT=off turns it off.
func setMemoryLimit(log *slog.Logger) {
	limit, err := memlimit.Set(memlimit.WithRatio(0.9), memlimit.WithLogger(slog.New(slog.DiscardHandler)))
	switch {
	case err != nil:
		log.Warn("no soft memory limit from the cgroup", logging.ErrKey, err)
	case limit > 0 && limit < math.MaxInt64:
		log.Info("soft memory limit (GOMEMLIMIT)", "bytes", limit)
	}
}

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
