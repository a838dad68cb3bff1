// Package installed proves pullwatch as a user installs it: the images built
// from Dockerfile.agent and Dockerfile.aggregator, deploy/ applied with
// kubectl apply -k (only the image names rewritten by an overlay), on the
// cluster in a box with real kubelets (e2e/harness/kubecluster).
//
// It needs root, the Debian packages (scripts/install-deps.sh) and the kube
// binaries (scripts/build-kube.sh); without them the tests skip, unless
// PULLWATCH_REQUIRE_REAL=1 (CI), when they fail. make e2e-installed runs it.
package installed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/kubenode"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

var (
	box        *kubecluster.Cluster
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		reason := proc.Missing(append([]string{"docker-registry"}, kubenode.Binaries...)...)
		if reason == "" {
			if _, err := kubeapi.LocateBinaries(""); err != nil {
				reason = err.Error()
			}
		}
		if reason != "" {
			if proc.RealRequired() {
				fmt.Fprintf(os.Stderr, "installed: real parts required (PULLWATCH_REQUIRE_REAL=1) but %s\n", reason)
				return 1
			}
			skipReason = reason
			return m.Run()
		}
		dir := os.Getenv("PULLWATCH_TEST_OUT")
		if dir == "" {
			dir = os.TempDir()
		}
		dir = filepath.Join(dir, "installed")
		// A killed earlier run's box (in this directory or another) is
		// stopped before its files go.
		if removed, err := kubecluster.CleanupStale(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "installed: cleaning up earlier runs: %v\n", err)
		} else if len(removed) > 0 {
			fmt.Fprintf(os.Stderr, "installed: stopped what earlier runs left: %s\n", strings.Join(removed, "; "))
		}
		_ = os.RemoveAll(dir)
		// The kubelets' token credential provider (KEP-4412) for the
		// box's private registry: TestTokenCredentialProviderInstalled.
		plugin, err := buildCredProvider(ctx, filepath.Join(dir, "bin"))
		if err != nil {
			fmt.Fprintf(os.Stderr, "installed: %v\n", err)
			return 1
		}
		c, err := kubecluster.Start(ctx, kubecluster.Options{Dir: dir, Nodes: 2, CredentialProvider: plugin, Log: os.Stderr})
		if err != nil {
			fmt.Fprintf(os.Stderr, "installed: %v\n", err)
			return 1
		}
		box = c
		// Ctrl-C or a CI runner's SIGTERM: stop the box before going.
		// (SIGKILL and go test's -timeout leave it to the next run's
		// kubecluster.Start, which stops what a run without its holder left.)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			s := <-sig
			fmt.Fprintf(os.Stderr, "installed: %v: stopping the box\n", s)
			if prom != nil {
				_ = prom.Stop()
			}
			if err := c.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "installed: stop: %v\n", err)
			}
			os.Exit(1)
		}()
		defer func() {
			// The Prometheus the first test started (installed).
			if prom != nil {
				_ = prom.Stop()
			}
			if err := c.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "installed: stop: %v\n", err)
			}
		}()
		return m.Run()
	}())
}

// need skips t when the cluster could not be made here.
func need(t *testing.T) *kubecluster.Cluster {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	return box
}

// buildCredProvider builds e2e/harness/credprovider (static: the kubelet
// runs it in the node's mount namespace) into dir and returns its path.
func buildCredProvider(ctx context.Context, dir string) (string, error) {
	root, err := checkout.Root()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, kubecluster.CredentialProviderName)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./harness/credprovider")
	cmd.Dir = filepath.Join(root, "e2e")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the credential provider plugin: %w\n%s", err, b)
	}
	return out, nil
}
