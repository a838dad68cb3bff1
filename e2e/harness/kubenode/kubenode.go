// Package kubenode runs one real Kubernetes node of the cluster in a box:
// a network namespace of its own (from e2e/harness/netns), a persistent mount
// namespace in which the node's standard paths — /etc/containerd,
// /run/containerd, /var/lib/containerd, /var/lib/kubelet, /var/log/pods,
// /etc/cni/net.d, /etc/kubernetes, /etc/resolv.conf, ... — are directories of
// this node only, a containerd serving CRI on /run/containerd/containerd.sock
// there (Debian's 1.6 by default, or one Options.Runtime names: a 2.x with a
// version = 3 config), a real kubelet registered with the
// API server, and kube-proxy (iptables mode) in the node's network namespace.
//
// So the hostPath volumes of what a user installs (deploy/) resolve to this
// node's files, exactly as on a real machine, while every node shares this
// machine's kernel. The settings this machine kind needs (cgroup v1 with
// cgroupfs and a cgroup root per node, no CAP_SYS_RESOURCE, swap) are the
// ones ../shared/INFRA.md names under "A real kubelet".
//
// Pods that are not host-network get an address from the node's pod range
// through Debian's containernetworking-plugins (bridge + host-local);
// Routes connects the ranges of all nodes over the box's bridge.
package kubenode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/runtimes"
)

// CNIBinDir is where Debian's containernetworking-plugins installs the plugins.
const CNIBinDir = "/usr/lib/cni"

// The node's standard paths: inside the node's mount namespace each is a
// bind mount of a directory (or file) under the node's Dir.
var nodeDirs = []string{
	"/etc/containerd",
	"/etc/containers",
	"/etc/cni/net.d",
	"/etc/kubernetes",
	"/etc/systemd/system/containerd.service.d",
	"/run/containerd",
	"/var/lib/containerd",
	"/var/lib/kubelet",
	"/var/lib/cni",
	"/var/log/pods",
	"/var/log/containers",
	// The agent DaemonSet's state directory (a hostPath): each node's own.
	"/var/lib/pullwatch",
}

// Binaries this package runs besides the kube binaries.
var Binaries = []string{"containerd", "runc", "nsenter", "unshare", "mount", "umount", "iptables", "conntrack"}

// Options configure Start.
type Options struct {
	// Name is the node's Kubernetes name; Zone its topology.kubernetes.io/zone.
	Name, Zone string
	// NS is the node's network namespace, attached to the box's bridge;
	// Gateway is the bridge's address (where the API server listens).
	NS      *netns.Namespace
	Gateway net.IP
	// Dir holds the node's files (created).
	Dir string
	// Kubelet and KubeProxy are the binaries (absolute paths).
	Kubelet, KubeProxy string
	// KubeletKubeconfig authenticates the kubelet (system:node:<Name> in
	// system:nodes); ProxyKubeconfig kube-proxy (system:kube-proxy).
	KubeletKubeconfig, ProxyKubeconfig string
	// ClientCAFile is the cluster CA: the kubelet authenticates the API
	// server's client certificate (logs, exec, port-forward) with it.
	ClientCAFile string
	// PodCIDR is this node's pod range ("10.244.1.0/24"); ClusterCIDR all
	// nodes' ("10.244.0.0/16"); ServiceCIDR the Services' ("10.96.0.0/16").
	PodCIDR, ClusterCIDR, ServiceCIDR string
	// SandboxImage is the CRI sandbox ("pause") image.
	SandboxImage string
	// Hosts are hosts.toml files for /etc/containerd/certs.d/<host>/.
	Hosts map[string]string
	// Resolv is the node's /etc/resolv.conf (default: a nameserver on the
	// node's own loopback, which answers nothing: the box has no DNS).
	Resolv string
	// Runtime is the containerd the node runs (e2e/harness/runtimes); the
	// zero value is Debian's containerd 1.6 on PATH with a version = 2
	// config. A 2.x one gets a version = 3 config and its own shim first
	// on containerd's PATH.
	Runtime runtimes.Containerd
	// Files are more node files (node path → content), e.g. the kubelet's
	// credential provider config; Executables node paths → files on this
	// machine copied there with mode 0755 (a credential provider plugin).
	Files, Executables map[string]string
	// KubeletArgs are more kubelet flags.
	KubeletArgs []string
	// Detach lets the node's daemons outlive this process (make demo-cluster).
	Detach bool
}

// Debian16 is Debian's containerd 1.6 (scripts/deps.txt), the default.
var Debian16 = runtimes.Containerd{Name: "containerd-1.6", Binary: "containerd", ConfigVersion: 2, Major: 1, Minor: 6}

// Node is a running node.
type Node struct {
	opts                       Options
	dir                        string
	nsFile                     string
	cgroup                     string
	containerd, kubelet, proxy *proc.Process
}

// Start lays out the node's files, makes its mount namespace, starts
// containerd, then kube-proxy and the kubelet. It returns once containerd
// answers CRI; the caller waits for the Node object to turn Ready.
func Start(ctx context.Context, opts Options) (*Node, error) {
	if opts.Name == "" || opts.NS == nil || opts.Dir == "" || opts.Kubelet == "" || opts.KubeProxy == "" {
		return nil, errors.New("kubenode: Name, NS, Dir, Kubelet and KubeProxy are required")
	}
	if opts.Runtime.Binary == "" {
		opts.Runtime = Debian16
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	// The cgroup root is named after the node's network namespace, which
	// carries the box's run id, so two boxes on one machine never share one.
	n := &Node{opts: opts, dir: dir, nsFile: filepath.Join(dir, "ns", "mnt"), cgroup: "/" + opts.NS.Netns()}
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"files", n.writeFiles},
		{"mount namespace", n.makeMountNamespace},
		{"cgroups", n.makeCgroups},
		{"network", n.configureNetwork},
		{"containerd", n.startContainerd},
		{"kube-proxy", n.startProxy},
		{"kubelet", n.startKubelet},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			_ = n.Stop()
			return nil, fmt.Errorf("kubenode %s: %s: %w", opts.Name, s.what, err)
		}
	}
	return n, nil
}

// Name is the node's name.
func (n *Node) Name() string { return n.opts.Name }

// IP is the node's address on the box's bridge.
func (n *Node) IP() net.IP { return n.opts.NS.IP() }

// NS is the node's network namespace.
func (n *Node) NS() *netns.Namespace { return n.opts.NS }

// Runtime is the containerd the node runs.
func (n *Node) Runtime() runtimes.Containerd { return n.opts.Runtime }

// Dir is the node's directory.
func (n *Node) Dir() string { return n.dir }

// HostPath is where the node's path p (e.g. "/etc/containerd/certs.d")
// lives on this machine, for a test to read or change the node's files.
func (n *Node) HostPath(p string) string {
	if p == "/etc/resolv.conf" {
		return filepath.Join(n.dir, "root", "etc", "resolv.conf")
	}
	return filepath.Join(n.dir, "root", filepath.Clean(p))
}

// CRIEndpoint is the node's containerd socket as seen from this machine.
func (n *Node) CRIEndpoint() string {
	return "unix://" + n.HostPath("/run/containerd") + "/containerd.sock"
}

// Exec runs argv inside the node (its mount and network namespaces) and
// returns the combined output.
func (n *Node) Exec(ctx context.Context, argv ...string) (string, error) {
	full := append([]string{"--mount=" + n.nsFile, "--net=" + n.opts.NS.Path(), "--"}, argv...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("on %s: %s: %w: %s", n.opts.Name, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// KubeletLog and ContainerdLog are the daemons' log files.
func (n *Node) KubeletLog() string    { return filepath.Join(n.dir, "kubelet.log") }
func (n *Node) ContainerdLog() string { return filepath.Join(n.dir, "containerd.log") }

func (n *Node) writeFiles(context.Context) error {
	for _, d := range nodeDirs {
		if err := os.MkdirAll(n.HostPath(d), 0o755); err != nil {
			return err
		}
	}
	resolv := n.opts.Resolv
	if resolv == "" {
		resolv = "# the box has no DNS server\nnameserver 127.0.0.53\n"
	}
	caPEM, err := os.ReadFile(n.opts.ClientCAFile)
	if err != nil {
		return err
	}
	files := map[string]string{
		"/etc/resolv.conf":                    resolv,
		"/etc/containerd/config.toml":         n.containerdConfig(),
		"/etc/cni/net.d/10-box.conflist":      n.cniConfig(),
		"/etc/kubernetes/kubelet-config.yaml": n.kubeletConfig(),
		"/etc/kubernetes/ca.crt":              string(caPEM),
	}
	for host, content := range n.opts.Hosts {
		files["/etc/containerd/certs.d/"+host+"/hosts.toml"] = content
	}
	for p, content := range n.opts.Files {
		files[p] = content
	}
	for p, content := range files {
		if err := n.writeFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	for p, src := range n.opts.Executables {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := n.writeFile(p, b, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// writeFile writes the node's file p (its directory created).
func (n *Node) writeFile(p string, b []byte, mode os.FileMode) error {
	hp := n.HostPath(p)
	if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
		return err
	}
	return os.WriteFile(hp, b, mode)
}

// makeMountNamespace makes a persistent mount namespace bound to
// Dir/ns/mnt (on a private bind mount of Dir/ns, as unshare requires),
// with mount events of this machine propagating in but none out, and binds
// the node's directories over the standard paths in it.
func (n *Node) makeMountNamespace(ctx context.Context) error {
	nsDir := filepath.Dir(n.nsFile)
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		return err
	}
	if err := run(ctx, "mount", "--bind", nsDir, nsDir); err != nil {
		return err
	}
	if err := run(ctx, "mount", "--make-private", nsDir); err != nil {
		return err
	}
	if err := os.WriteFile(n.nsFile, nil, 0o600); err != nil {
		return err
	}
	if err := run(ctx, "unshare", "--mount="+n.nsFile, "--propagation", "slave", "true"); err != nil {
		return err
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, d := range append(nodeDirs, "/etc/resolv.conf") {
		// The mount point must exist on this machine; creating an empty
		// directory (or file) there is all that happens outside the node.
		if d == "/etc/resolv.conf" {
			fmt.Fprintf(&script, "mount --bind %q %q\n", n.HostPath(d), d)
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		fmt.Fprintf(&script, "mount --bind %q %q\n", n.HostPath(d), d)
	}
	// The kubelet wants its root shared so that volume mounts propagate
	// into containers that ask for it (HostToContainer).
	script.WriteString("mount --make-rshared /var/lib/kubelet\n")
	return run(ctx, "nsenter", "--mount="+n.nsFile, "--", "sh", "-c", script.String())
}

// makeCgroups creates the node's cgroup root in every cgroup v1 hierarchy
// (the kubelet refuses to start on missing paths), with cpuset's cpus and
// mems copied from the parent.
func (n *Node) makeCgroups(context.Context) error {
	hier, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return err
	}
	for _, h := range hier {
		base := filepath.Join("/sys/fs/cgroup", h.Name())
		if h.Name() == "unified" || !isCgroupMount(base) {
			continue
		}
		d := filepath.Join(base, strings.TrimPrefix(n.cgroup, "/"))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if h.Name() == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(base, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(d, f), err)
				}
			}
		}
	}
	return nil
}

func isCgroupMount(p string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(p, &st) == nil && (st.Type == 0x27e0eb || st.Type == 0x63677270)
}

// configureNetwork turns on forwarding inside the node (between its pod
// bridge and the box's bridge; the node has no default route, so nothing
// leaves the box) and routes the Service range to the box's gateway, where
// kube-proxy's rules turn it into an endpoint's address.
func (n *Node) configureNetwork(ctx context.Context) error {
	ns := n.opts.NS
	if _, err := ns.Run(ctx, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	if n.opts.ServiceCIDR != "" {
		if _, err := ns.Run(ctx, "ip", "route", "replace", n.opts.ServiceCIDR, "via", n.opts.Gateway.String()); err != nil {
			return err
		}
	}
	return nil
}

// Route makes this node reach other's pod range through other's address.
func (n *Node) Route(ctx context.Context, other *Node) error {
	_, err := n.opts.NS.Run(ctx, "ip", "route", "replace", other.opts.PodCIDR, "via", other.IP().String())
	return err
}

func (n *Node) spec(name string, argv ...string) proc.Spec {
	return proc.Spec{
		Name:    name + "@" + n.opts.Name,
		Path:    "nsenter",
		Args:    append([]string{"--mount=" + n.nsFile, "--net=" + n.opts.NS.Path(), "--"}, argv...),
		Dir:     n.dir,
		LogFile: filepath.Join(n.dir, name+".log"),
		Detach:  n.opts.Detach,
	}
}

func (n *Node) startContainerd(ctx context.Context) error {
	spec := n.spec("containerd", n.opts.Runtime.Binary, "--config", "/etc/containerd/config.toml")
	// A built containerd's own containerd-shim-runc-v2 comes first on its
	// PATH (Debian's 1.6 uses the one on PATH).
	spec.Env = n.opts.Runtime.Env()
	p, err := proc.Start(spec)
	if err != nil {
		return err
	}
	n.containerd = p
	sock := strings.TrimPrefix(n.CRIEndpoint(), "unix://")
	return proc.Poll(ctx, 30*time.Second, 100*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("%s exited: %v\n%s: %w", n.opts.Runtime.Name, p.ExitErr(), p.LogTail(30), proc.ErrStop)
		}
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

func (n *Node) startProxy(context.Context) error {
	p, err := proc.Start(n.spec("kube-proxy", n.opts.KubeProxy,
		"--kubeconfig="+n.opts.ProxyKubeconfig,
		"--hostname-override="+n.opts.Name,
		"--proxy-mode=iptables",
		"--cluster-cidr="+n.opts.ClusterCIDR,
		// Leave the machine-wide conntrack sysctls alone: the nodes share
		// one kernel.
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		"--v=1",
	))
	if err != nil {
		return err
	}
	n.proxy = p
	return nil
}

func (n *Node) startKubelet(context.Context) error {
	labels := "topology.kubernetes.io/zone=" + n.opts.Zone
	argv := append([]string{n.opts.Kubelet,
		"--config=/etc/kubernetes/kubelet-config.yaml",
		"--kubeconfig=" + n.opts.KubeletKubeconfig,
		"--hostname-override=" + n.opts.Name,
		"--node-ip=" + n.IP().String(),
		"--node-labels=" + labels,
		"--root-dir=/var/lib/kubelet",
		"--v=1",
	}, n.opts.KubeletArgs...)
	p, err := proc.Start(n.spec("kubelet", argv...))
	if err != nil {
		return err
	}
	n.kubelet = p
	return nil
}

// StopKubelet stops the node's kubelet alone, as when it crashes: the
// node's containers keep running, nothing restarts them, and the Node turns
// NotReady after the controller manager's grace period.
func (n *Node) StopKubelet() error {
	if n.kubelet == nil {
		return fmt.Errorf("%s: the kubelet is not running", n.opts.Name)
	}
	err := n.kubelet.Stop(15 * time.Second)
	n.kubelet = nil
	return err
}

// StartKubelet starts the kubelet again after StopKubelet.
func (n *Node) StartKubelet(ctx context.Context) error {
	if n.kubelet != nil {
		return fmt.Errorf("%s: the kubelet is already running", n.opts.Name)
	}
	return n.startKubelet(ctx)
}

// ctr is Debian's ctr (1.6) against the node's containerd, in the
// Kubernetes namespace: it does the same on every runtime, since
// containerd 2.x still serves the v1 containers and tasks APIs it speaks.
var ctr = []string{"ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io"}

// containers are the ids of the node's Kubernetes containers whose image
// reference contains image.
func (n *Node) containers(ctx context.Context, image string) ([]string, error) {
	out, err := n.Exec(ctx, append(ctr, "containers", "ls", "-q")...)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, id := range strings.Fields(out) {
		info, err := n.Exec(ctx, append(ctr, "containers", "info", id)...)
		if err == nil && strings.Contains(info, image) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// KillContainers SIGKILLs the task of every Kubernetes container on the
// node whose image reference contains image, through the node's own
// containerd, and returns how many it killed.
func (n *Node) KillContainers(ctx context.Context, image string) (int, error) {
	ids, err := n.containers(ctx, image)
	if err != nil {
		return 0, err
	}
	killed := 0
	for _, id := range ids {
		if _, err := n.Exec(ctx, append(ctr, "tasks", "kill", "-s", "SIGKILL", id)...); err != nil {
			if strings.Contains(err.Error(), "not found") {
				continue // an exited container: no task
			}
			return killed, fmt.Errorf("%s: kill container %s: %w", n.opts.Name, id, err)
		}
		killed++
	}
	return killed, nil
}

// PauseContainers freezes the running task of every Kubernetes container
// on the node whose image (the IMAGE of ctr containers ls, not the pod's
// sandbox or labels) contains image (ctr tasks pause: the cgroup
// freezer), as root on the node can: its processes stop where they are,
// their sockets stay open, and the kubelet restarts nothing until a
// liveness probe has failed its threshold. It returns the paused
// containers' ids, for ResumeContainers.
func (n *Node) PauseContainers(ctx context.Context, image string) ([]string, error) {
	out, err := n.Exec(ctx, append(ctr, "containers", "ls")...)
	if err != nil {
		return nil, err
	}
	tasks, err := n.Exec(ctx, append(ctr, "tasks", "ls")...)
	if err != nil {
		return nil, err
	}
	running := map[string]bool{}
	for _, line := range strings.Split(tasks, "\n") {
		// TASK PID STATUS
		if f := strings.Fields(line); len(f) == 3 && f[2] == "RUNNING" {
			running[f[0]] = true
		}
	}
	var paused []string
	for _, line := range strings.Split(out, "\n") {
		// CONTAINER IMAGE RUNTIME
		f := strings.Fields(line)
		if len(f) < 2 || !running[f[0]] || !strings.Contains(f[1], image) {
			continue
		}
		if _, err := n.Exec(ctx, append(ctr, "tasks", "pause", f[0])...); err != nil {
			return paused, fmt.Errorf("%s: pause container %s: %w", n.opts.Name, f[0], err)
		}
		paused = append(paused, f[0])
	}
	return paused, nil
}

// ResumeContainers thaws the tasks PauseContainers froze.
func (n *Node) ResumeContainers(ctx context.Context, ids []string) error {
	var errs []error
	for _, id := range ids {
		if _, err := n.Exec(ctx, append(ctr, "tasks", "resume", id)...); err != nil {
			errs = append(errs, fmt.Errorf("%s: resume container %s: %w", n.opts.Name, id, err))
		}
	}
	return errors.Join(errs...)
}

// PodMemory is what the pod with uid holds in memory, from its memory
// cgroup on this node (cgroup v1, as the kubelet's cgroupfs driver makes
// it under the node's cgroup root): rss now (memory.stat total_rss), the
// highest usage so far (memory.max_usage_in_bytes, page cache included)
// and the pod's limit (memory.limit_in_bytes).
func (n *Node) PodMemory(uid string) (rss, peak, limit int64, err error) {
	root := filepath.Join("/sys/fs/cgroup", "memory", strings.TrimPrefix(n.cgroup, "/"))
	dir := ""
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if d.Name() == "pod"+uid {
			dir = p
			return filepath.SkipAll
		}
		return nil
	})
	if dir == "" {
		return 0, 0, 0, fmt.Errorf("%s: no memory cgroup of pod %s under %s", n.opts.Name, uid, root)
	}
	read := func(file string) (int64, error) {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			return 0, err
		}
		return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	if peak, err = read("memory.max_usage_in_bytes"); err != nil {
		return 0, 0, 0, err
	}
	if limit, err = read("memory.limit_in_bytes"); err != nil {
		return 0, 0, 0, err
	}
	stat, err := os.ReadFile(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return 0, 0, 0, err
	}
	for _, line := range strings.Split(string(stat), "\n") {
		if v, ok := strings.CutPrefix(line, "total_rss "); ok {
			rss, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return rss, peak, limit, err
		}
	}
	return 0, 0, 0, fmt.Errorf("%s: %s/memory.stat has no total_rss", n.opts.Name, dir)
}

// Stop stops the kubelet, kube-proxy and containerd (and every container
// containerd's shims run), then releases the mount namespace.
func (n *Node) Stop() error {
	var errs []error
	for _, p := range []*proc.Process{n.kubelet, n.proxy} {
		if p != nil {
			if err := p.Stop(15 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// The pods' processes (shims, runc children) live in the node's
	// cgroups: kill them so nothing outlives the node.
	n.killCgroup()
	if n.containerd != nil {
		if err := n.containerd.Stop(15 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	n.killShims()
	n.removePodNetns()
	_ = exec.Command("umount", "-l", n.nsFile).Run()
	_ = exec.Command("umount", "-l", filepath.Dir(n.nsFile)).Run()
	n.removeCgroups()
	return errors.Join(errs...)
}

// Leftover is the node a run that was killed (SIGKILL, a CI time limit)
// left in dir, on the network namespace netns: Stop kills whatever still
// runs in its mount namespace (containerd, its shims, the kubelet,
// kube-proxy) and cgroups (the pods), removes the pods' network namespaces,
// unmounts the mount namespace and removes the cgroups.
func Leftover(dir, netns string) *Node {
	return &Node{dir: dir, nsFile: filepath.Join(dir, "ns", "mnt"), cgroup: "/" + netns}
}

// removePodNetns removes the network namespaces of the node's pods that
// are still there: containerd bind-mounts each under /run/netns (cni-...)
// inside the node's mount namespace, so on this machine they show up as
// files in /run/netns that no namespace is mounted on once the node is
// gone. Called once the node's processes are gone.
func (n *Node) removePodNetns() {
	out, err := exec.Command("nsenter", "--mount="+n.nsFile, "--", "cat", "/proc/self/mountinfo").Output()
	if err != nil {
		return
	}
	for _, path := range PodNetnsMounts(string(out)) {
		_ = exec.Command("nsenter", "--mount="+n.nsFile, "--", "umount", path).Run()
		_ = os.Remove(path)
	}
}

// PodNetnsMounts are the nsfs mount points named cni-* (as containerd names
// a pod's) under /run/netns (or /var/run/netns) in a mountinfo listing; not
// the node's own namespace, which netns made on this machine.
func PodNetnsMounts(mountinfo string) []string {
	var out []string
	for _, line := range strings.Split(mountinfo, "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 5 || sep < 0 || sep+1 >= len(f) || f[sep+1] != "nsfs" {
			continue
		}
		mp := f[4]
		for _, dir := range []string{"/run/netns/", "/var/run/netns/"} {
			if name, ok := strings.CutPrefix(mp, dir); ok && strings.HasPrefix(name, "cni-") && !strings.Contains(name, "/") {
				out = append(out, "/run/netns/"+name)
			}
		}
	}
	return out
}

// killCgroup kills every process in the node's cgroup tree (its pods).
func (n *Node) killCgroup() {
	base := filepath.Join("/sys/fs/cgroup", "pids", strings.TrimPrefix(n.cgroup, "/"))
	_ = filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return nil
	})
}

// killShims kills containerd-shim processes of this node (they run in the
// node's mount namespace, which is identified by its inode).
func (n *Node) killShims() {
	var st syscall.Stat_t
	if syscall.Stat(n.nsFile, &st) != nil {
		return
	}
	want := "mnt:[" + strconv.FormatUint(st.Ino, 10) + "]"
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "mnt")); err == nil && l == want {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeCgroups removes the node's (then empty) cgroup directories,
// deepest first.
func (n *Node) removeCgroups() {
	hier, _ := os.ReadDir("/sys/fs/cgroup")
	for _, h := range hier {
		root := filepath.Join("/sys/fs/cgroup", h.Name(), strings.TrimPrefix(n.cgroup, "/"))
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(dirs[i])
		}
	}
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// PodCIDR is the node's pod range.
func (n *Node) PodCIDR() string { return n.opts.PodCIDR }
