// Package lab holds the e2e tests' fixtures, one per kind of lab: the node
// every test of a package shares (one containerd, one registry, the built
// binaries; Need), a node, registries and a kube-apiserver of a test's own
// (FreshNode, Registry, Kube), an aggregator with the real agent on the
// shared node in a known state (StartScenario), and the ways tests run the
// binaries against them (Agent, Node.Check, StartAggregator, StartAgent).
//
// The parts need root and the Debian packages (scripts/install-deps.sh).
// Without them the tests skip, unless PULLWATCH_REQUIRE_REAL=1 (CI), when
// they fail. Each test package's TestMain is `lab.Main(m)`.
package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// Lab is the node every test of a package shares: one containerd, one
// registry.
type Lab struct {
	Dir        string
	Bin        string // directory with pullwatch-agent and pullwatch-aggregator
	Reg        *registry.Registry
	Containerd *containerd.Containerd
}

var (
	startOnce  sync.Once
	theLab     *Lab
	skipReason string
	startErr   error
)

// Main runs a test package's tests, stops the shared lab if a test
// started it, and exits: a package's TestMain is `lab.Main(m)`.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main for a TestMain with more to do: it runs the tests, stops the
// shared lab if a test started it, and returns the exit code.
func Run(m *testing.M) int {
	code := m.Run()
	if theLab != nil {
		theLab.stop()
	}
	return code
}

// Need returns the shared lab, starting it for the first test that needs
// it; it skips the test when the real parts are not there (fails under
// PULLWATCH_REQUIRE_REAL=1), and fails it when the lab did not start.
func Need(t testing.TB) *Lab {
	t.Helper()
	startOnce.Do(start)
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if startErr != nil {
		t.Fatalf("e2e: %v", startErr)
	}
	return theLab
}

func start() {
	if reason := missingPrerequisites(); reason != "" {
		if proc.RealRequired() {
			startErr = fmt.Errorf("real parts required (PULLWATCH_REQUIRE_REAL=1) but %s", reason)
			return
		}
		skipReason = reason
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	theLab, startErr = startLab(ctx)
}

func missingPrerequisites() string {
	return proc.Missing("containerd", "runc", "docker-registry", "prometheus")
}

// OutDir is where tests leave logs and artifacts (PULLWATCH_TEST_OUT, or a
// temp dir).
func OutDir() (string, error) {
	if d := os.Getenv("PULLWATCH_TEST_OUT"); d != "" {
		return d, os.MkdirAll(d, 0o755)
	}
	return os.MkdirTemp("", "pullwatch-e2e-out-")
}

func startLab(ctx context.Context) (*Lab, error) {
	dir, err := os.MkdirTemp("", "pw-e2e-")
	if err != nil {
		return nil, err
	}
	l := &Lab{Dir: dir}
	if l.Bin, err = checkout.Binaries(ctx, "", filepath.Join(dir, "bin")); err != nil {
		return nil, err
	}
	if l.Reg, err = registry.Start(ctx, filepath.Join(dir, "registry"), registry.Options{}); err != nil {
		return nil, err
	}
	if _, err := registry.PushSleeper(ctx, l.Reg, "e2e/pause", "v1"); err != nil {
		l.stop()
		return nil, err
	}
	l.Containerd, err = containerd.Start(ctx, filepath.Join(dir, "containerd"), containerd.Options{SandboxImage: l.PauseImage()})
	if err != nil {
		l.stop()
		return nil, err
	}
	return l, nil
}

// PauseImage is the sandbox image the lab's registry serves.
func (l *Lab) PauseImage() string { return l.Reg.Ref("e2e/pause", "v1") }

func (l *Lab) stop() {
	if l.Containerd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_ = l.Containerd.RemoveAllPods(ctx)
		cancel()
		_ = l.Containerd.Stop()
	}
	if l.Reg != nil {
		_ = l.Reg.Stop()
	}
	// Keep logs for a failed run's artifacts; state is large, logs are not.
	// Each test package has a lab of its own: its logs are named for the
	// package (go test runs a package's tests in its directory).
	pkg := "e2e"
	if wd, err := os.Getwd(); err == nil {
		pkg = filepath.Base(wd)
	}
	if out, err := OutDir(); err == nil {
		for _, f := range []string{"containerd/containerd.log", "registry/registry.log"} {
			if b, err := os.ReadFile(filepath.Join(l.Dir, f)); err == nil {
				_ = os.WriteFile(filepath.Join(out, pkg+"-"+filepath.Base(f)), b, 0o644)
			}
		}
	}
	_ = os.RemoveAll(l.Dir)
}

// Agent runs pullwatch-agent with args (a check: `check -o json ...`, or
// the table) on the host and returns its output and exit code.
func (l *Lab) Agent(t testing.TB, args ...string) agentcheck.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := agentcheck.Run(exec.CommandContext(ctx, filepath.Join(l.Bin, checkout.AgentBinary), args...))
	if err != nil {
		t.Fatalf("run pullwatch-agent %v: %v", args, err)
	}
	return r
}
