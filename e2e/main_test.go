// Package e2e runs pullwatch end to end on real parts: containerd with its
// CRI plugin, Debian's docker-registry, Prometheus, and the built binaries.
// The parts need root and the Debian packages (scripts/install-deps.sh).
// Without them the tests skip, unless PULLWATCH_REQUIRE_REAL=1 (CI), when
// they fail.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// lab is the node every test shares: one containerd, one registry.
type lab struct {
	dir        string
	bin        string // directory with pullwatch-agent and pullwatch-aggregator
	reg        *registry.Registry
	containerd *containerd.Containerd
}

var (
	theLab     *lab
	skipReason string
)

func TestMain(m *testing.M) {
	code := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if reason := missingPrerequisites(); reason != "" {
			if proc.RealRequired() {
				fmt.Fprintf(os.Stderr, "e2e: real parts required (PULLWATCH_REQUIRE_REAL=1) but %s\n", reason)
				return 1
			}
			skipReason = reason
			return m.Run()
		}
		l, err := startLab(ctx)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
		theLab = l
		defer l.stop()
		return m.Run()
	}()
	os.Exit(code)
}

func missingPrerequisites() string {
	return proc.Missing("containerd", "runc", "docker-registry", "prometheus")
}

// need skips the test when the real parts are not there.
func need(t *testing.T) *lab {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	return theLab
}

// outDir is where tests leave logs and artifacts (PULLWATCH_TEST_OUT, or a
// temp dir).
func outDir() (string, error) {
	if d := os.Getenv("PULLWATCH_TEST_OUT"); d != "" {
		return d, os.MkdirAll(d, 0o755)
	}
	return os.MkdirTemp("", "pullwatch-e2e-out-")
}

func startLab(ctx context.Context) (*lab, error) {
	dir, err := os.MkdirTemp("", "pw-e2e-")
	if err != nil {
		return nil, err
	}
	l := &lab{dir: dir}
	if l.bin, err = binaries(dir); err != nil {
		return nil, err
	}
	if l.reg, err = registry.Start(ctx, filepath.Join(dir, "registry"), registry.Options{}); err != nil {
		return nil, err
	}
	if _, err := registry.PushSleeper(ctx, l.reg, "e2e/pause", "v1"); err != nil {
		l.stop()
		return nil, err
	}
	l.containerd, err = containerd.Start(ctx, filepath.Join(dir, "containerd"), containerd.Options{SandboxImage: l.reg.Ref("e2e/pause", "v1")})
	if err != nil {
		l.stop()
		return nil, err
	}
	return l, nil
}

func (l *lab) stop() {
	if l.containerd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_ = l.containerd.RemoveAllPods(ctx)
		cancel()
		_ = l.containerd.Stop()
	}
	if l.reg != nil {
		_ = l.reg.Stop()
	}
	// Keep logs for a failed run's artifacts; state is large, logs are not.
	if out, err := outDir(); err == nil {
		for _, f := range []string{"containerd/containerd.log", "registry/registry.log"} {
			if b, err := os.ReadFile(filepath.Join(l.dir, f)); err == nil {
				_ = os.WriteFile(filepath.Join(out, filepath.Base(f)), b, 0o644)
			}
		}
	}
	_ = os.RemoveAll(l.dir)
}

// binaries returns the directory holding pullwatch-agent and
// pullwatch-aggregator: PULLWATCH_BIN when it has both (make integration
// builds them), else a fresh build under dir.
func binaries(dir string) (string, error) {
	if b := os.Getenv("PULLWATCH_BIN"); b != "" {
		if fileExists(filepath.Join(b, "pullwatch-agent")) && fileExists(filepath.Join(b, "pullwatch-aggregator")) {
			return b, nil
		}
	}
	bin := filepath.Join(dir, "bin")
	for _, m := range []struct{ module, pkg, out string }{
		{"../agent", "./cmd/pullwatch-agent", "pullwatch-agent"},
		{"../aggregator", "./cmd/pullwatch-aggregator", "pullwatch-aggregator"},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, m.out), m.pkg)
		cmd.Dir = m.module
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build %s: %v\n%s", m.out, err, out)
		}
	}
	return bin, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
