package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/alertmanager"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// TestClusterUpDown runs the real pwlab binary as make demo does: cluster
// up leaves the whole cluster running after pwlab exits, with node-2 cut
// off and the summary saying so; status and break work on it from another
// process; down removes every process, the network and the state.
func TestClusterUpDown(t *testing.T) {
	bins := []string{containerd.Binary, "runc", "containerd-shim-runc-v2", registry.Binary, prometheus.Binary, alertmanager.Binary, "go"}
	proc.RequireReal(t, append(bins, netns.Binaries...)...)
	bin, tmp, run := buildPwlab(t)
	dir := filepath.Join(tmp, "demo")
	t.Cleanup(func() {
		_ = exec.Command(bin, "cluster", "down", "--dir", dir).Run()
		if left := proc.Find(dir); len(left) > 0 {
			t.Errorf("processes left: %v", left)
		}
	})

	out := run("cluster", "up", "--dir", dir, "--interval", "2s", "--stale-after", "10s", "--http-port", "0", "--alert-for", "3s")
	t.Logf("pwlab cluster up:\n%s", out)
	for _, want := range []string{"cut node-2's egress", "NODES", "IMAGES", "DIAGNOSIS", "NODE    registry", "status page:  http://127.0.0.1:", "make demo-down"} {
		if !strings.Contains(out, want) {
			t.Errorf("up output lacks %q", want)
		}
	}
	if !regexpLine(out, `node-2 .*DOWN .*DOWN`) || !regexpLine(out, `cluster/web:v1 +available\* +UNREACHABLE\* +available\*`) {
		t.Errorf("up output does not show node-2 cut off")
	}

	// After pwlab exited: every part still runs.
	var st struct {
		NetworkID string `json:"networkId"`
		Nodes     []struct {
			AgentPid int `json:"agentPid"`
		} `json:"nodes"`
		Aggregator struct {
			Pid int `json:"pid"`
		} `json:"aggregator"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	pids := []int{st.Aggregator.Pid}
	for _, n := range st.Nodes {
		pids = append(pids, n.AgentPid)
	}
	for _, pid := range pids {
		if !proc.Alive(pid) {
			t.Errorf("pid %d not running after pwlab exited", pid)
		}
	}
	if len(proc.Find(dir)) < 10 {
		t.Errorf("only %d processes run from %s", len(proc.Find(dir)), dir)
	}

	out = run("cluster", "status", "--dir", dir)
	if !strings.Contains(out, "node-2 agent running, egress cut: -A "+netns.FaultChain) || !strings.Contains(out, "NODES") {
		t.Errorf("status output:\n%s", out)
	}
	if out := run("cluster", "up", "--dir", dir); !strings.Contains(out, "already up") {
		t.Errorf("second up:\n%s", out)
	}
	run("cluster", "heal", "--dir", dir)
	out = run("cluster", "status", "--dir", dir)
	if strings.Contains(out, "egress cut") {
		t.Errorf("status after heal still shows a cut:\n%s", out)
	}

	out = run("cluster", "down", "--dir", dir)
	if !strings.Contains(out, "cluster down") {
		t.Errorf("down:\n%s", out)
	}
	for _, pid := range pids {
		if proc.Alive(pid) {
			t.Errorf("pid %d alive after down", pid)
		}
	}
	if left := proc.Find(dir); len(left) > 0 {
		t.Errorf("processes left after down: %v", left)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir still there after down: %v", err)
	}
	if _, err := netns.Attach(st.NetworkID); err == nil {
		t.Errorf("network %s still there after down", st.NetworkID)
	}
	if out := run("cluster", "down", "--dir", dir); !strings.Contains(out, "no cluster") {
		t.Errorf("second down:\n%s", out)
	}
}

func regexpLine(text, pattern string) bool {
	return regexp.MustCompile(`(?m)` + pattern).MatchString(text)
}
