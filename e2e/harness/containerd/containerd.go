// Package containerd runs a real containerd (Debian's 1.6 by default, or a
// 1.7 or 2.x built by scripts/build-runtimes.sh; with its CRI plugin, runc
// and the overlayfs snapshotter) in a directory of its own, and drives it
// over CRI the way a kubelet would: pull images, run host-network pods with
// init and regular containers, remove them.
package containerd

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// Binary is the containerd executable.
const Binary = "containerd"

// Options configure Start.
type Options struct {
	// SandboxImage is the CRI sandbox ("pause") image, e.g. an image pushed
	// to the local registry with registry.PushSleeper. containerd pulls it
	// itself, without credentials, when the first pod starts.
	SandboxImage string
	// Hosts are hosts.toml files written to certs.d/<host>/hosts.toml
	// (host → file content); see also SetHostsTOML and registry.HostsTOML.
	Hosts map[string]string
	// Detach starts containerd in its own session so it outlives this
	// process (pwlab). Stop still works, also after Attach.
	Detach bool
	// Binary overrides the containerd executable (default "containerd").
	Binary string
	// LogLevel is containerd's log level (default "info").
	LogLevel string
	// StartTimeout bounds the wait for CRI Version to answer (default 30s).
	StartTimeout time.Duration
	// Netns is a network namespace (a name under /run/netns, as ip netns
	// uses) to run containerd in, through nsenter --net: its pulls, and
	// the host-network pods it runs, use that namespace's network. Only
	// the network namespace changes, so its mounts stay visible here and
	// its unix sockets reachable. The namespace needs loopback up (the CRI
	// stream server listens on 127.0.0.1).
	Netns string
	// ConfigVersion is config.toml's schema: 2 (containerd 1.x, the
	// default) or 3 (containerd 2.x: the CRI plugin split into
	// io.containerd.cri.v1.images and .runtime). See ImagesTable.
	ConfigVersion int
	// Registry, when not nil, replaces the registry section the harness
	// writes (config_path = CertsDir) and is appended to config.toml as
	// it is: TOML with full table names (ImagesTable(version) + ".registry").
	// "" leaves the registry unconfigured: the runtime's defaults.
	Registry *string
	// ImagesExtra is more keys of the CRI images table (e.g.
	// use_local_image_pull = true), one per line.
	ImagesExtra string
	// TopLevel is TOML written before the first table (imports = [...]).
	TopLevel string
	// ConfigFile is where config.toml is written (default dir/config.toml)
	// and NodeConfig the path containerd is given (--config; default
	// ConfigFile): the same file seen through Mounts.
	ConfigFile, NodeConfig string
	// Mounts bind-mounts host directories over node paths (node path →
	// host dir) in a private mount namespace that containerd alone runs
	// in (unshare -m), so the node's /etc/containerd or /etc/docker can be
	// a test's own without touching this machine's. A node path that does
	// not exist here is created (an empty directory) as the mount point.
	Mounts map[string]string
	// Env is added to containerd's environment (e.g. a PATH that finds
	// its own containerd-shim-runc-v2 first).
	Env []string
}

// ImagesTable is the CRI plugin's image and registry table for a config
// version: where config_path, mirrors, configs and sandbox images live.
func ImagesTable(version int) string {
	if version >= 3 {
		return `plugins."io.containerd.cri.v1.images"`
	}
	return `plugins."io.containerd.grpc.v1.cri"`
}

// Containerd is a running containerd with a CRI client connected to it.
type Containerd struct {
	dir, root, state, certs string
	socket                  string
	sockDir                 string // short /tmp/pw-* dir holding the sockets when dir is too long ("" otherwise)
	configPath, logPath     string
	proc                    *proc.Process

	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
	img  runtimeapi.ImageServiceClient
}

// state is what Attach needs to find a detached containerd again.
type state struct {
	Socket  string `json:"socket"`
	SockDir string `json:"sockDir,omitempty"`
}

// maxSocketPath keeps socket paths under the kernel's 108-byte sun_path limit
// (with room for the ".ttrpc" suffix).
const maxSocketPath = 100

// Start writes dir/config.toml and runs containerd with its root, state,
// certs.d and sockets under dir (sockets in a short /tmp/pw-* directory if
// dir is too long), logging to dir/containerd.log. It returns once CRI
// Version answers.
func Start(ctx context.Context, dir string, opts Options) (*Containerd, error) {
	if opts.Binary == "" {
		opts.Binary = Binary
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := newContainerd(dir)
	if opts.ConfigFile != "" {
		c.configPath = opts.ConfigFile
	}
	for _, d := range []string{c.root, c.state, c.certs, filepath.Join(dir, "cni", "bin"), filepath.Join(dir, "cni", "conf"), filepath.Join(dir, "opt"), filepath.Join(dir, "pods")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	c.socket = filepath.Join(dir, "containerd.sock")
	if len(c.socket)+len(".ttrpc") > maxSocketPath {
		if c.sockDir, err = os.MkdirTemp("/tmp", "pw-"); err != nil {
			return nil, err
		}
		c.socket = filepath.Join(c.sockDir, "containerd.sock")
	}
	if conn, err := net.DialTimeout("unix", c.socket, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("containerd: %s is already in use (another containerd on %s?)", c.socket, dir)
	}
	for host, content := range opts.Hosts {
		if err := c.SetHostsTOML(host, content); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(c.configPath), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.configPath, []byte(c.config(opts)), 0o644); err != nil {
		return nil, err
	}
	nodeConfig := opts.NodeConfig
	if nodeConfig == "" {
		nodeConfig = c.configPath
	}
	spec := proc.Spec{
		Name:    "containerd",
		Path:    opts.Binary,
		Args:    []string{"--config", nodeConfig},
		Dir:     dir,
		LogFile: c.logPath,
		Detach:  opts.Detach,
		Env:     opts.Env,
	}
	if len(opts.Mounts) > 0 {
		if spec, err = withMounts(spec, opts.Mounts); err != nil {
			return nil, err
		}
	}
	if opts.Netns != "" {
		// nsenter execs containerd in place: the pid stays the same.
		spec.Args = append([]string{"--net=/run/netns/" + opts.Netns, "--", spec.Path}, spec.Args...)
		spec.Path = "nsenter"
	}
	p, err := proc.Start(spec)
	if err != nil {
		c.removeSockDir()
		return nil, err
	}
	c.proc = p
	fail := func(err error) (*Containerd, error) {
		tail := proc.LogTail(c.logPath, 40)
		_ = c.Stop()
		return nil, fmt.Errorf("containerd: %w\n--- %s (tail) ---\n%s", err, c.logPath, tail)
	}
	if err := proc.WritePidFile(filepath.Join(dir, "containerd.pid"), p.Pid()); err != nil {
		return fail(err)
	}
	if err := c.writeState(); err != nil {
		return fail(err)
	}
	if err := c.dial(); err != nil {
		return fail(err)
	}
	err = proc.Poll(ctx, opts.StartTimeout, 100*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("exited: %v: %w", p.ExitErr(), proc.ErrStop)
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := c.rt.Version(cctx, &runtimeapi.VersionRequest{})
		if status.Code(err) == codes.Unimplemented {
			// The gRPC server only serves once every plugin has loaded: the CRI plugin is not there.
			return fmt.Errorf("CRI service missing: %v: %w", err, proc.ErrStop)
		}
		return err
	})
	if err != nil {
		return fail(fmt.Errorf("CRI Version on %s never answered: %w", c.socket, err))
	}
	return c, nil
}

// withMounts runs spec in a private mount namespace of its own with each
// host dir bind-mounted over its node path (unshare -m, then a shell that
// mounts and execs the daemon: the pid stays the daemon's).
func withMounts(spec proc.Spec, mounts map[string]string) (proc.Spec, error) {
	nodePaths := make([]string, 0, len(mounts))
	for p := range mounts {
		nodePaths = append(nodePaths, p)
	}
	sort.Strings(nodePaths) // parents before children
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, p := range nodePaths {
		if !filepath.IsAbs(p) || filepath.Clean(p) == "/" {
			return spec, fmt.Errorf("containerd: mount point %q must be an absolute path below /", p)
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return spec, fmt.Errorf("containerd: mount point %s: %w", p, err)
		}
		fmt.Fprintf(&script, "mount --bind %s %s\n", shellQuote(mounts[p]), shellQuote(p))
	}
	script.WriteString(`exec "$@"` + "\n")
	args := []string{"-m", "--propagation", "private", "sh", "-c", script.String(), "containerd", spec.Path}
	spec.Args = append(args, spec.Args...)
	spec.Path = "unshare"
	return spec, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func newContainerd(dir string) *Containerd {
	return &Containerd{
		dir:        dir,
		root:       filepath.Join(dir, "root"),
		state:      filepath.Join(dir, "state"),
		certs:      filepath.Join(dir, "certs.d"),
		configPath: filepath.Join(dir, "config.toml"),
		logPath:    filepath.Join(dir, "containerd.log"),
	}
}

// Attach connects to a containerd started (detached) in dir by an earlier
// process. If it is no longer running, Attach still returns a Containerd
// whose Stop cleans up what is left (shims, mounts, socket dir).
func Attach(dir string) (*Containerd, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := newContainerd(dir)
	b, err := os.ReadFile(filepath.Join(dir, "containerd.json"))
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("containerd state: %w", err)
	}
	c.socket, c.sockDir = st.Socket, st.SockDir
	if pid, err := proc.ReadPidFile(filepath.Join(dir, "containerd.pid")); err == nil {
		if p, err := proc.Attach("containerd", pid, c.configPath, c.logPath); err == nil {
			c.proc = p
		}
	}
	if err := c.dial(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Containerd) dial() error {
	conn, err := grpc.NewClient("unix://"+c.socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return err
	}
	c.conn = conn
	c.rt = runtimeapi.NewRuntimeServiceClient(conn)
	c.img = runtimeapi.NewImageServiceClient(conn)
	return nil
}

func (c *Containerd) writeState() error {
	b, err := json.MarshalIndent(state{Socket: c.socket, SockDir: c.sockDir}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.dir, "containerd.json"), b, 0o644)
}

// Socket is the path of containerd's gRPC (and CRI) unix socket.
func (c *Containerd) Socket() string { return c.socket }

// Endpoint is the CRI endpoint, "unix://" + Socket().
func (c *Containerd) Endpoint() string { return "unix://" + c.socket }

// Dir, Root, State, ConfigPath and LogFile locate containerd's files.
func (c *Containerd) Dir() string        { return c.dir }
func (c *Containerd) Root() string       { return c.root }
func (c *Containerd) State() string      { return c.state }
func (c *Containerd) ConfigPath() string { return c.configPath }
func (c *Containerd) LogFile() string    { return c.logPath }

// CertsDir is the CRI registry config_path (certs.d).
func (c *Containerd) CertsDir() string { return c.certs }

// Pid is containerd's process id (0 if unknown).
func (c *Containerd) Pid() int {
	if c.proc == nil {
		return 0
	}
	return c.proc.Pid()
}

// Running reports whether the containerd process is alive.
func (c *Containerd) Running() bool { return c.proc != nil && !c.proc.Exited() }

// Runtime and Images are CRI clients connected to this containerd.
func (c *Containerd) Runtime() runtimeapi.RuntimeServiceClient { return c.rt }
func (c *Containerd) Images() runtimeapi.ImageServiceClient    { return c.img }

// Conn is the gRPC connection (for the containerd client or other services).
func (c *Containerd) Conn() *grpc.ClientConn { return c.conn }

// Close closes the CRI connection and leaves containerd running (for a
// Containerd from Attach that is only inspected).
func (c *Containerd) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// SetHostsTOML writes certs.d/<host>/hosts.toml. containerd reads these on
// every pull, so no restart is needed. Empty content removes the file.
func (c *Containerd) SetHostsTOML(host, content string) error {
	if host == "" || strings.ContainsAny(host, "/\\") || host == "." || host == ".." {
		return fmt.Errorf("bad hosts.toml host %q", host)
	}
	d := filepath.Join(c.certs, host)
	if content == "" {
		return os.RemoveAll(d)
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(content), 0o644)
}

// Stop removes every CRI pod (stopping its containers), stops containerd
// (SIGTERM, then SIGKILL), kills any shim it leaves behind with the shim's
// processes, unmounts everything under its directories and removes the
// short socket directory. dir itself stays (t.TempDir removes it).
func (c *Containerd) Stop() error {
	var errs []error
	if c.Running() && c.rt != nil {
		// Best effort: if containerd cannot remove its pods (it may be
		// dying), the shim clean-up below still removes them.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = c.RemoveAllPods(ctx)
		cancel()
	}
	if c.conn != nil {
		_ = c.conn.Close()
	}
	if c.proc != nil {
		if err := c.proc.Stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	// Shims are not in containerd's process group; a pod that could not be
	// removed leaves its shim (and the container processes under it).
	var shimSockets []string
	if c.socket != "" {
		for _, pid := range proc.Find("-address " + c.socket) {
			if cl, err := proc.Cmdline(pid); err == nil {
				shimSockets = append(shimSockets, shimSocket(cl))
			}
			if err := proc.KillTree(pid, 10*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("shim %d: %w", pid, err))
			}
		}
	}
	// A killed shim leaves its socket in /run/containerd/s; its bundle's
	// "address" file says which one.
	c.removeShimSockets(shimSockets)
	if err := unmountUnder(c.dir, c.sockDir); err != nil {
		errs = append(errs, err)
	}
	_ = os.Remove(filepath.Join(c.dir, "containerd.pid"))
	c.removeSockDir()
	return errors.Join(errs...)
}

func (c *Containerd) removeShimSockets(socks []string) {
	files, _ := filepath.Glob(filepath.Join(c.state, "io.containerd.runtime.v2.task", "*", "*", "address"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			socks = append(socks, strings.TrimPrefix(strings.TrimSpace(string(b)), "unix://"))
		}
	}
	for _, sock := range socks {
		if sock == "" {
			continue
		}
		if st, err := os.Lstat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
			if conn, err := net.DialTimeout("unix", sock, 200*time.Millisecond); err == nil {
				conn.Close() // a live shim still serves it
				continue
			}
			_ = os.Remove(sock)
		}
	}
}

// shimSocket computes a runc v2 shim's socket from its command line the way
// containerd 1.6 names it: /run/containerd/s/<sha256(address/namespace/id)>.
func shimSocket(cmdline string) string {
	f := strings.Fields(cmdline)
	arg := func(name string) string {
		for i := 0; i+1 < len(f); i++ {
			if f[i] == name {
				return f[i+1]
			}
		}
		return ""
	}
	addr, ns, id := arg("-address"), arg("-namespace"), arg("-id")
	if addr == "" || ns == "" || id == "" {
		return ""
	}
	return filepath.Join("/run/containerd/s", fmt.Sprintf("%x", sha256.Sum256([]byte(filepath.Join(addr, ns, id)))))
}

func (c *Containerd) removeSockDir() {
	if c.sockDir != "" {
		_ = os.RemoveAll(c.sockDir)
	}
}

// unmountUnder lazily unmounts every mount point below the given
// directories, deepest first.
func unmountUnder(dirs ...string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		for _, d := range dirs {
			if d != "" && strings.HasPrefix(mp, d+"/") {
				mps = append(mps, mp)
				break
			}
		}
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	var errs []error
	for _, mp := range mps {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("umount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// config renders containerd's config.toml: version 2 (containerd 1.x, and
// 2.x migrates it) or 3 (containerd 2.x).
func (c *Containerd) config(opts Options) string {
	q := strconv.Quote // Go's quoted strings are valid TOML basic strings for paths
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	version := opts.ConfigVersion
	if version == 0 {
		version = 2
	}
	w("# written by the pullwatch e2e harness (config version %d)", version)
	w("version = %d", version)
	w("root = %s", q(c.root))
	w("state = %s", q(c.state))
	w("oom_score = 0")
	// CRI must load, or Start fails at once rather than serving without it.
	w(`required_plugins = ["io.containerd.grpc.v1.cri"]`)
	// NRI (on by default in 2.x) would share one socket between the
	// containerds of a test.
	w(`disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.nri.v1.nri"]`)
	if opts.TopLevel != "" {
		w("%s", opts.TopLevel)
	}
	w("")
	w("[grpc]")
	w("  address = %s", q(c.socket))
	w("  uid = 0")
	w("  gid = 0")
	w("[ttrpc]")
	w("  address = %s", q(c.socket+".ttrpc"))
	w("[debug]")
	w(`  address = ""`) // no debug socket
	w("  level = %s", q(opts.LogLevel))
	w("[metrics]")
	w(`  address = ""`) // no metrics listener
	w("")
	w("[plugins]")
	w(`  [plugins."io.containerd.internal.v1.opt"]`)
	w("    path = %s", q(filepath.Join(c.dir, "opt")))
	images, runtime := ImagesTable(version), ImagesTable(version)
	if version >= 3 {
		runtime = `plugins."io.containerd.cri.v1.runtime"`
		w(`  [plugins."io.containerd.grpc.v1.cri"]`)
		w(`    stream_server_address = "127.0.0.1"`)
		w(`    stream_server_port = "0"`)
		w(`  [%s]`, images)
		w(`    snapshotter = "overlayfs"`)
		if opts.ImagesExtra != "" {
			w("%s", opts.ImagesExtra)
		}
		if opts.SandboxImage != "" {
			w(`    [%s.pinned_images]`, images)
			w("      sandbox = %s", q(opts.SandboxImage))
		}
		w(`  [%s]`, runtime)
	} else {
		w(`  [%s]`, runtime)
		if opts.SandboxImage != "" {
			w("    sandbox_image = %s", q(opts.SandboxImage))
		}
		w(`    stream_server_address = "127.0.0.1"`)
		w(`    stream_server_port = "0"`)
		if opts.ImagesExtra != "" {
			w("%s", opts.ImagesExtra)
		}
	}
	// This machine's root lacks CAP_SYS_RESOURCE: without this runc fails
	// with "can't get final child's PID from pipe: EOF".
	w("    restrict_oom_score_adj = true")
	w("    disable_apparmor = true")
	w("    enable_selinux = false")
	w(`    [%s.containerd]`, runtime)
	if version < 3 {
		w(`      snapshotter = "overlayfs"`)
	}
	w(`      default_runtime_name = "runc"`)
	w(`      [%s.containerd.runtimes.runc]`, runtime)
	w(`        runtime_type = "io.containerd.runc.v2"`)
	w(`        [%s.containerd.runtimes.runc.options]`, runtime)
	w("          SystemdCgroup = false")
	w("          Root = %s", q(filepath.Join(c.state, "runc")))
	// Host-network pods need no CNI; point the plugin at empty dirs of ours.
	w(`    [%s.cni]`, runtime)
	w("      bin_dir = %s", q(filepath.Join(c.dir, "cni", "bin")))
	w("      conf_dir = %s", q(filepath.Join(c.dir, "cni", "conf")))
	if opts.Registry != nil {
		w("%s", *opts.Registry)
	} else {
		w(`    [%s.registry]`, images)
		w("      config_path = %s", q(c.certs))
	}
	return b.String()
}
