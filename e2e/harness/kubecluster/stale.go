package kubecluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/kubenode"
	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// RecordDir holds one record per box this machine runs (tmpfs: it goes at
// reboot, as everything a box starts does). A box writes its record before
// it starts anything, so a run that is killed (SIGKILL, a CI time limit,
// Ctrl-C, which ends go test's binary without its deferred Stop) leaves a
// record the next run finds: CleanupStale stops what it names.
const RecordDir = "/run/pullwatch-box"

// record is what a box leaves in RecordDir.
type record struct {
	// Network is the box's network (netns run id); Dir its directory.
	Network string `json:"network"`
	Dir     string `json:"dir"`
	// Owner is the process holding the box and KeepWhile the path that
	// keeps a detached box (make demo-cluster) alive, as netns records
	// them: the box is stale once both say so.
	OwnerPid   int    `json:"ownerPid"`
	OwnerStart uint64 `json:"ownerStart"`
	KeepWhile  string `json:"keepWhile,omitempty"`
	// Nodes are the nodes the box starts: their directories and network
	// namespaces (which also name their cgroups).
	Nodes   []recordNode `json:"nodes"`
	Created time.Time    `json:"created"`
}

type recordNode struct {
	Dir   string `json:"dir"`
	Netns string `json:"netns"`
}

func (r record) path() string { return filepath.Join(RecordDir, r.Network+".json") }

// stale reports whether the box's owner is gone (netns.State.Stale).
func (r record) stale() bool {
	return netns.State{OwnerPid: r.OwnerPid, OwnerStart: r.OwnerStart, KeepWhile: r.KeepWhile}.Stale()
}

// writeRecord records the box about to start (after its network exists,
// before any process).
func (c *Cluster) writeRecord() error {
	st := c.Net.State()
	r := record{
		Network: st.ID, Dir: c.dir,
		OwnerPid: st.OwnerPid, OwnerStart: st.OwnerStart, KeepWhile: st.KeepWhile,
		Created: time.Now().UTC(),
	}
	for i := 1; i <= c.opts.Nodes; i++ {
		name := "node-" + fmt.Sprint(i)
		r.Nodes = append(r.Nodes, recordNode{Dir: filepath.Join(c.dir, name), Netns: st.Prefix + "-" + st.ID + "-" + name})
	}
	if err := os.MkdirAll(RecordDir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := r.path() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, r.path())
}

// removeRecord is the last step of a Stop that stopped everything.
func (c *Cluster) removeRecord() error {
	if c.Net == nil {
		return nil
	}
	err := os.Remove(record{Network: c.Net.ID()}.path())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func readRecords() ([]record, error) {
	files, _ := filepath.Glob(filepath.Join(RecordDir, "*.json"))
	var out []record
	var errs []error
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.Network == "" {
			errs = append(errs, fmt.Errorf("box record %s: unreadable (%v): removed", f, err))
			_ = os.Remove(f)
			continue
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}

// CleanupStale stops every box whose owner is gone (see RecordDir), then
// removes every stale network (netns.CleanupStale). A live box is never
// touched. It returns what it stopped.
func CleanupStale(ctx context.Context) ([]string, error) {
	return cleanup(ctx, func(r record) bool { return r.stale() })
}

// CleanupDir stops the box recorded for dir whether or not its owner is
// alive (make demo-down, once the owner had its chance to stop it), then
// every stale box and network.
func CleanupDir(ctx context.Context, dir string) ([]string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	return cleanup(ctx, func(r record) bool { return r.Dir == abs || r.stale() })
}

func cleanup(ctx context.Context, reap func(record) bool) ([]string, error) {
	records, err := readRecords()
	errs := []error{err}
	var removed []string
	for _, r := range records {
		if !reap(r) {
			continue
		}
		left, err := r.reap(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("box %s in %s: %w", r.Network, r.Dir, err))
			continue
		}
		what := "box " + r.Network + " in " + r.Dir
		if len(left) > 0 {
			what += " (" + strings.Join(left, ", ") + ")"
		}
		removed = append(removed, what)
	}
	gone, err := netns.CleanupStale(ctx, "")
	removed = append(removed, gone...)
	errs = append(errs, err)
	return removed, errors.Join(errs...)
}

// boxBinaries are the programs a box runs outside its nodes' mount
// namespaces, by the basename of their executable: reap kills those whose
// command line names the box's directory, and nothing else (not a shell
// or an editor that has a log file of the box open).
var boxBinaries = map[string]bool{
	"etcd": true, "kube-apiserver": true, "kube-controller-manager": true, "kube-scheduler": true,
	"kubelet": true, "kube-proxy": true, "prometheus": true, "docker-registry": true, "nsenter": true,
}

// reap stops what the record names: the control plane, Prometheus and the
// registries (by their command lines, which name the box's directory),
// each node (kubenode.Leftover: its containerd, shims, kubelet, kube-proxy,
// pods and their network namespaces, mount namespace and cgroups), then
// the network (with it the bridge and this machine's routes to the pods). It returns what it found running.
func (r record) reap(ctx context.Context) ([]string, error) {
	var found []string
	var errs []error
	self := os.Getpid()
	for _, pid := range proc.Find(r.Dir + "/") {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || pid == self || !boxBinaries[filepath.Base(strings.TrimSuffix(exe, " (deleted)"))] {
			continue
		}
		found = append(found, fmt.Sprintf("%s[%d]", filepath.Base(exe), pid))
		if err := proc.KillTree(pid, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range r.Nodes {
		if _, err := os.Stat(filepath.Join(n.Dir, "ns", "mnt")); err == nil {
			found = append(found, "node "+filepath.Base(n.Dir))
		}
		if err := kubenode.Leftover(n.Dir, n.Netns).Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleting the bridge deletes this machine's routes to the pods.
	if net, err := netns.Attach(r.Network); err == nil {
		if err := net.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return found, err
	}
	if err := os.Remove(r.path()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return found, err
	}
	return found, nil
}
