package cluster

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/alertmanager"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// The scenarios' timing: agents check every testInterval, a node is
// stale after testStaleAfter, and every alert's for: is testFor.
const (
	testInterval   = 2 * time.Second
	testStaleAfter = 6 * time.Second
	testFor        = "4s"
)

var (
	theCluster *Cluster
	theHook    *alertmanager.Webhook
	skipReason string
	suiteStart time.Time
)

// TestMain builds one cluster for every scenario (they run in file order
// on it) and tears it down after, also when a scenario fails or the run is
// interrupted; a run killed outright is cleaned up by the next one
// (CleanupStale).
func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if reason := missingPrerequisites(); reason != "" {
		if proc.RealRequired() {
			fmt.Fprintf(os.Stderr, "cluster: real parts required (PULLWATCH_REQUIRE_REAL=1) but %s\n", reason)
			return 1
		}
		skipReason = reason
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if removed, err := CleanupStale(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "cluster: cleaning up earlier runs: %v\n", err)
	} else if len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "cluster: removed leftovers of earlier runs: %s\n", strings.Join(removed, "; "))
	}
	dir, err := TempDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin, err := checkout.Binaries(ctx, "", filepath.Join(dir, "bin"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}
	rules, err := RuleFiles("")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}
	if len(rules) == 0 {
		fmt.Fprintln(os.Stderr, "cluster: no deploy/rules/*.rules.yaml: every alert assertion will fail")
	}
	theHook, err = alertmanager.StartWebhook("")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}
	defer theHook.Close()
	suiteStart = time.Now()
	t0 := time.Now()
	c, err := Start(ctx, Options{
		Dir: dir, Bin: bin, Interval: testInterval, StaleAfter: testStaleAfter,
		RuleFiles: rules, AlertFor: testFor, WebhookURL: theHook.URL(), Log: os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}
	theCluster = c
	fmt.Fprintf(os.Stderr, "cluster: topology up in %s (binaries from %s)\n", time.Since(t0).Round(100*time.Millisecond), bin)

	// SIGINT/SIGTERM (go test's own timeout sends neither) still tear down.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "cluster: %v: tearing down\n", s)
		teardown(c)
		os.Exit(1)
	}()
	code := m.Run()
	signal.Stop(sigs)
	teardown(c)
	return code
}

func teardown(c *Cluster) {
	t0 := time.Now()
	if out := os.Getenv("PULLWATCH_TEST_OUT"); out != "" {
		dst := filepath.Join(out, "cluster")
		if err := os.MkdirAll(dst, 0o755); err == nil {
			for name, f := range c.LogFiles() {
				if b, err := os.ReadFile(f); err == nil {
					_ = os.WriteFile(filepath.Join(dst, strings.ReplaceAll(name, "/", "-")+".log"), b, 0o644)
				}
			}
		}
	}
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "cluster: teardown: %v\n", err)
	}
	fmt.Fprintf(os.Stderr, "cluster: torn down in %s\n", time.Since(t0).Round(100*time.Millisecond))
}

func missingPrerequisites() string {
	bins := []string{containerd.Binary, "runc", "containerd-shim-runc-v2", registry.Binary, prometheus.Binary, alertmanager.Binary, "go"}
	return proc.Missing(append(bins, netns.Binaries...)...)
}

// need skips the test when the real parts are not there.
func need(t *testing.T) *Cluster {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if theCluster == nil {
		t.Fatal("no cluster")
	}
	return theCluster
}
