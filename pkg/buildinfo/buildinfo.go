// Package buildinfo says which build of pullwatch is running: its version,
// the commit it was built from and the Go toolchain, as both binaries print
// them (`version`), export them (pullwatch_build_info) and, for the agent,
// report them to the aggregator; and it reads release versions, for the
// aggregator's version-skew rule (Skew).
package buildinfo

import (
	"fmt"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
)

// Revision is the commit the binary was built from, set at build time with
// -ldflags "-X github.com/pullwatch/pullwatch/pkg/buildinfo.Revision=...".
// Empty: the Go toolchain's VCS stamp (vcs.revision), when there is one.
var Revision = ""

// Unknown stands for a revision nobody recorded.
const Unknown = "unknown"

// Info is one build.
type Info struct {
	Version   string // e.g. v0.3.1, or dev
	Revision  string // a commit, or Unknown
	GoVersion string // runtime.Version(), e.g. go1.26.6
}

// Read is the running binary's Info for its version (each binary stamps
// its own version variable).
func Read(version string) Info {
	rev := Revision
	if rev == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					rev = s.Value
				}
			}
		}
	}
	if rev == "" {
		rev = Unknown
	}
	if version == "" {
		version = "dev"
	}
	return Info{Version: version, Revision: rev, GoVersion: runtime.Version()}
}

// Release is a version of the form vMAJOR.MINOR.PATCH.
type Release struct{ Major, Minor, Patch int }

func (r Release) String() string { return fmt.Sprintf("v%d.%d.%d", r.Major, r.Minor, r.Patch) }

// releaseRe: vMAJOR.MINOR.PATCH (v optional), then nothing, a pre-release
// or build suffix, or what `git describe` appends (-N-gHASH, -dirty).
var releaseRe = regexp.MustCompile(`^v?(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(?:[-+].*)?$`)

// ParseRelease reads the release a version names; ok is false for
// versions that name none (dev, a bare commit, empty).
func ParseRelease(version string) (r Release, ok bool) {
	m := releaseRe.FindStringSubmatch(version)
	if m == nil {
		return Release{}, false
	}
	// The pattern bounds each part to 9 digits: Atoi cannot fail.
	r.Major, _ = strconv.Atoi(m[1])
	r.Minor, _ = strconv.Atoi(m[2])
	r.Patch, _ = strconv.Atoi(m[3])
	return r, true
}

// MaxMinorSkew is how many minor versions an agent may be apart from its
// aggregator, either way, within the same major version.
const MaxMinorSkew = 1

// SkewError says why an agent's version is outside the skew rule.
type SkewError struct {
	Agent, Aggregator Release
}

func (e *SkewError) Error() string {
	lo, hi := e.Aggregator.Minor-MaxMinorSkew, e.Aggregator.Minor+MaxMinorSkew
	lo = max(lo, 0)
	return fmt.Sprintf("agent %s is outside the version skew aggregator %s accepts: v%d.%d.x to v%d.%d.x (one minor version either way, same major; docs/install.md#version-skew)",
		e.Agent, e.Aggregator, e.Aggregator.Major, lo, e.Aggregator.Major, hi)
}

// Skew applies the version-skew rule: an aggregator accepts agents of its
// own major version whose minor version is at most MaxMinorSkew away from
// its own, older or newer (aggregator v0.3.x: agents v0.2.x to v0.4.x), so
// that either one may be upgraded first, one minor version at a time. A
// version that names no release (dev builds, tests) on either side is not
// checked. It returns nil or a *SkewError.
func Skew(aggregatorVersion, agentVersion string) error {
	agg, ok := ParseRelease(aggregatorVersion)
	if !ok {
		return nil
	}
	ag, ok := ParseRelease(agentVersion)
	if !ok {
		return nil
	}
	if ag.Major != agg.Major || ag.Minor < agg.Minor-MaxMinorSkew || ag.Minor > agg.Minor+MaxMinorSkew {
		return &SkewError{Agent: ag, Aggregator: agg}
	}
	return nil
}
