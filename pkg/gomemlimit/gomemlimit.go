// Package gomemlimit gives the Go runtime a soft memory limit from the
// container's cgroup memory limit: both binaries call it at start-up.
package gomemlimit

import (
	"log/slog"
	"math"

	"github.com/KimMachineGun/automemlimit/memlimit"

	"github.com/pullwatch/pullwatch/pkg/logging"
)

// FromCgroup sets the soft memory limit to 90% of the container's (cgroup)
// memory limit, unless GOMEMLIMIT is set, so that the garbage collector
// works harder near the limit instead of letting the heap double past it.
// Outside a memory-limited cgroup it changes nothing. AUTOMEMLIMIT=off
// turns it off. It logs the limit it set, or why it set none.
func FromCgroup(log *slog.Logger) {
	limit, err := memlimit.Set(memlimit.WithRatio(0.9), memlimit.WithLogger(slog.New(slog.DiscardHandler)))
	switch {
	case err != nil:
		log.Warn("no soft memory limit from the cgroup", logging.ErrKey, err)
	case limit > 0 && limit < math.MaxInt64:
		log.Info("soft memory limit (GOMEMLIMIT)", "bytes", limit)
	}
}
