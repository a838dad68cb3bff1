// Package checkout finds the pullwatch checkout the tests run from and the
// pullwatch binaries they run: a directory given, $PULLWATCH_BIN (make
// build's bin/) when it has both binaries, else a fresh `go build` of both
// from the checkout.
package checkout

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// Binary names in a binaries directory.
const (
	AgentBinary      = "pullwatch-agent"
	AggregatorBinary = "pullwatch-aggregator"
)

// BinEnv names a directory holding both binaries (make integration sets
// it to bin/); the tests and pwlab use it instead of building.
const BinEnv = "PULLWATCH_BIN"

// Root is the directory holding go.work, found by walking up from this
// package's source directory, then from the working directory.
func Root() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, d := range starts {
		for {
			if FileExists(filepath.Join(d, "go.work")) {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", errors.New("cannot find the pullwatch checkout: no go.work above the checkout package or the working directory")
}

// HasBinaries reports whether dir holds pullwatch-agent and
// pullwatch-aggregator.
func HasBinaries(dir string) bool {
	return FileExists(filepath.Join(dir, AgentBinary)) && FileExists(filepath.Join(dir, AggregatorBinary))
}

// Binaries returns a directory with pullwatch-agent and
// pullwatch-aggregator: bin when given (it must have both), else $BinEnv
// when it has both, else a fresh `go build` of both into buildDir.
func Binaries(ctx context.Context, bin, buildDir string) (string, error) {
	if bin != "" {
		if !HasBinaries(bin) {
			return "", fmt.Errorf("checkout: %s lacks %s or %s (run make build)", bin, AgentBinary, AggregatorBinary)
		}
		return filepath.Abs(bin)
	}
	if d := os.Getenv(BinEnv); d != "" && HasBinaries(d) {
		return filepath.Abs(d)
	}
	root, err := Root()
	if err != nil {
		return "", err
	}
	for _, b := range []struct{ module, out string }{
		{"agent", AgentBinary},
		{"aggregator", AggregatorBinary},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(buildDir, b.out), "./cmd/"+b.out)
		cmd.Dir = filepath.Join(root, b.module)
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("checkout: build %s in %s: %w\n%s", b.out, cmd.Dir, err, out)
		}
	}
	return buildDir, nil
}

// FileExists reports whether p exists.
func FileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
