package proc

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RealRequired reports whether missing real parts must fail tests rather
// than skip them: PULLWATCH_REQUIRE_REAL=1, which CI sets.
func RealRequired() bool { return os.Getenv("PULLWATCH_REQUIRE_REAL") == "1" }

// Missing says what of root and bins (looked up in PATH) this machine
// lacks, or "" when it has everything.
func Missing(bins ...string) string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return "needs " + strings.Join(missing, ", ") + ": run scripts/install-deps.sh as root"
}

// RequireReal skips t when root or one of bins is missing, or fails it
// when RealRequired.
func RequireReal(t testing.TB, bins ...string) {
	t.Helper()
	if msg := Missing(bins...); msg != "" {
		SkipOrFail(t, msg)
	}
}

// SkipOrFail skips t with msg, or fails it when RealRequired.
func SkipOrFail(t testing.TB, msg string) {
	t.Helper()
	if RealRequired() {
		t.Fatal(msg + " (PULLWATCH_REQUIRE_REAL=1)")
	}
	t.Skip(msg)
}
