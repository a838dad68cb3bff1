package registry

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// SleeperPackage is the Go package of the sleeper binary put into images.
const SleeperPackage = "github.com/pullwatch/pullwatch/e2e/harness/sleeper"

// SleeperEnv names an environment variable that may point at a prebuilt
// static sleeper binary (for GOARCH of this machine), skipping the build.
const SleeperEnv = "PULLWATCH_SLEEPER_BIN"

var (
	sleeperMu   sync.Mutex
	sleeperBins = map[string][]byte{}
)

// SleeperBinary returns the static (CGO_ENABLED=0) sleeper binary for
// linux/goarch, built once per process with `go build` from the e2e module's
// source (the Go build cache makes repeat builds cheap).
func SleeperBinary(goarch string) ([]byte, error) {
	sleeperMu.Lock()
	defer sleeperMu.Unlock()
	if b, ok := sleeperBins[goarch]; ok {
		return b, nil
	}
	if p := os.Getenv(SleeperEnv); p != "" && goarch == runtime.GOARCH {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", SleeperEnv, err)
		}
		sleeperBins[goarch] = b
		return b, nil
	}
	src, err := sleeperSourceDir()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "pw-sleeper-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "sleeper")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOFLAGS=-buildvcs=false")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build sleeper (go build in %s): %v\n%s", src, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	sleeperBins[goarch] = b
	return b, nil
}

// sleeperSourceDir finds e2e/harness/sleeper: next to this file's source
// when built from the tree, else through `go list` from the working dir.
func sleeperSourceDir() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		d := filepath.Join(filepath.Dir(file), "..", "sleeper")
		if _, err := os.Stat(filepath.Join(d, "main.go")); err == nil {
			return filepath.Clean(d), nil
		}
	}
	out, err := exec.Command("go", "list", "-f", "{{.Dir}}", SleeperPackage).Output()
	if err != nil {
		return "", fmt.Errorf("cannot find the sleeper source (%s); run from the pullwatch tree or set %s: %w", SleeperPackage, SleeperEnv, err)
	}
	return strings.TrimSpace(string(out)), nil
}
