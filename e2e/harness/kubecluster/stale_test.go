package kubecluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/kubenode"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

const helperEnv = "PULLWATCH_KUBECLUSTER_HELPER_DIR"

// leftovers is what the helper's box runs, as the helper reports it.
type leftovers struct {
	Network string   `json:"network"`
	Netns   []string `json:"netns"`   // the box's namespaces (nodes, registry)
	MntIno  []uint64 `json:"mntIno"`  // the nodes' mount namespaces
	PodNets []string `json:"podNets"` // the pods' network namespaces (/run/netns/cni-...)
	Cgroups []string `json:"cgroups"`
}

// TestKilledRunIsCleanedUp: a box whose test process is killed with
// SIGKILL (a CI time limit; Ctrl-C ends go test's binary without its
// deferred Stop too) leaves its control plane, kubelets,
// containerds, kube-proxy, registries and a running pod behind; the next
// run's start (CleanupStale, Start's first step) stops all of it: no
// process, namespace, pod network namespace, mount or cgroup is left.
func TestKilledRunIsCleanedUp(t *testing.T) {
	if reason := proc.Missing(append([]string{"docker-registry"}, kubenode.Binaries...)...); reason != "" {
		skipOrFail(t, reason)
	}
	if _, err := kubeapi.LocateBinaries(""); err != nil {
		skipOrFail(t, err.Error())
	}
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready.json")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperKilledBox$", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	log, err := os.Create(filepath.Join(dir, "helper.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	var left leftovers
	err = proc.Poll(context.Background(), 8*time.Minute, time.Second, func() error {
		select {
		case <-exited:
			return fmt.Errorf("the helper exited: %w", proc.ErrStop)
		default:
		}
		b, err := os.ReadFile(ready)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &left)
	})
	if err != nil {
		_ = cmd.Process.Kill()
		t.Fatalf("the helper's box: %v\n%s", err, proc.LogTail(log.Name(), 40))
	}
	t.Logf("the helper's box is up after %s: %+v", time.Since(start).Round(time.Second), left)
	boxDir := filepath.Join(dir, "box")
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	// What a killed run leaves: its daemons are still running.
	running := boxProcesses(boxDir)
	if len(running) == 0 {
		t.Fatalf("nothing of the killed run's box is running: the test proves nothing")
	}
	t.Logf("left running after SIGKILL: %d processes naming %s, %d in the nodes' mount namespaces", len(running), boxDir, len(inMountNS(left.MntIno)))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cleanStart := time.Now()
	removed, err := CleanupStale(ctx)
	if err != nil {
		t.Errorf("CleanupStale: %v", err)
	}
	t.Logf("CleanupStale took %s: %q", time.Since(cleanStart).Round(100*time.Millisecond), removed)
	if !strings.Contains(strings.Join(removed, "\n"), "box "+left.Network) {
		t.Errorf("CleanupStale did not report box %s", left.Network)
	}
	if p := boxProcesses(boxDir); len(p) > 0 {
		t.Errorf("still running: %v", p)
	}
	if p := inMountNS(left.MntIno); len(p) > 0 {
		t.Errorf("still running in a node's mount namespace: %v", p)
	}
	for _, n := range append(left.Netns, left.PodNets...) {
		if _, err := os.Stat(filepath.Join("/run/netns", filepath.Base(n))); err == nil {
			t.Errorf("network namespace %s still there", n)
		}
	}
	for _, cg := range left.Cgroups {
		if _, err := os.Stat(cg); err == nil {
			t.Errorf("cgroup %s still there", cg)
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), " "+boxDir+"/") {
		t.Errorf("mounts under %s still there", boxDir)
	}
	if _, err := os.Stat(filepath.Join(RecordDir, left.Network+".json")); err == nil {
		t.Errorf("the box's record is still there")
	}
}

// TestHelperKilledBox is run by TestKilledRunIsCleanedUp in a child
// process: it starts a one-node box with a pod on the pod network, says
// what runs, and waits to be killed.
func TestHelperKilledBox(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper for TestKilledRunIsCleanedUp")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Dir: filepath.Join(dir, "box"), Nodes: 1, Log: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "left", Namespace: "default"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "left", Image: c.Registry.Ref(PauseRepo, "1")}}},
	}
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := proc.Poll(ctx, 3*time.Minute, time.Second, func() error {
		p, err := c.Client().CoreV1().Pods("default").Get(ctx, "left", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return fmt.Errorf("pod %s", p.Status.Phase)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	left := leftovers{Network: c.Net.ID()}
	for _, ns := range c.Net.Namespaces() {
		left.Netns = append(left.Netns, ns.Netns())
	}
	for _, n := range c.Nodes {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(n.Dir(), "ns", "mnt"), &st); err != nil {
			t.Fatal(err)
		}
		left.MntIno = append(left.MntIno, st.Ino)
		left.Cgroups = append(left.Cgroups, filepath.Join("/sys/fs/cgroup/pids", n.NS().Netns()))
		out, err := exec.Command("nsenter", "--mount="+filepath.Join(n.Dir(), "ns", "mnt"), "--", "cat", "/proc/self/mountinfo").Output()
		if err != nil {
			t.Fatal(err)
		}
		left.PodNets = append(left.PodNets, kubenode.PodNetnsMounts(string(out))...)
	}
	if len(left.PodNets) == 0 {
		t.Fatal("the running pod has no network namespace of its own")
	}
	b, _ := json.Marshal(left)
	if err := os.WriteFile(filepath.Join(dir, "ready.json.tmp"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "ready.json.tmp"), filepath.Join(dir, "ready.json")); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done() // killed before that
	_ = c.Stop()
}

// boxProcesses are the live processes whose command line names dir.
func boxProcesses(dir string) []string {
	var out []string
	for _, pid := range proc.Find(dir + "/") {
		cl, _ := proc.Cmdline(pid)
		if len(cl) > 100 {
			cl = cl[:100]
		}
		out = append(out, strconv.Itoa(pid)+" "+cl)
	}
	return out
}

// inMountNS are the live processes in one of the mount namespaces inos.
func inMountNS(inos []uint64) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !proc.Alive(pid) {
			continue
		}
		l, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "mnt"))
		if err != nil {
			continue
		}
		for _, ino := range inos {
			if l == "mnt:["+strconv.FormatUint(ino, 10)+"]" {
				out = append(out, pid)
			}
		}
	}
	return out
}

func skipOrFail(t *testing.T, reason string) {
	t.Helper()
	if proc.RealRequired() {
		t.Fatalf("real parts required (PULLWATCH_REQUIRE_REAL=1) but %s", reason)
	}
	t.Skip(reason)
}
