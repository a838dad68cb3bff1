package cli

import (
	"log/slog"
	"math"

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
