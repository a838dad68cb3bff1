// Command pwlab brings up a small, real lab for trying pullwatch by hand
// (make demo): a containerd with its CRI plugin and a plain-HTTP registry on
// 127.0.0.1, demo images, and one running pod. Everything runs detached
// from pwlab, with state and pid files in one directory.
//
//	pwlab up     --dir DIR   start the lab (says so if it is already up)
//	pwlab status --dir DIR   show what is running
//	pwlab down   --dir DIR   stop everything and remove the lab's state
//
// pwlab cluster up|status|break|heal|down --dir DIR does the same for the
// cluster in a box of package e2e/cluster (several nodes in network
// namespaces, registries, aggregator, Prometheus, Alertmanager): see
// cluster.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

const usage = `pwlab — a real containerd + registry lab for pullwatch

Usage:
  pwlab up     --dir DIR [--registry-port N] [--timeout D]
  pwlab status --dir DIR
  pwlab down   --dir DIR
  pwlab cluster up|status|break|heal|down --dir DIR   (see pwlab cluster help)
  pwlab kube up|down --dir DIR   the box with real kubelets and deploy/ installed (see pwlab kube help)

up      starts containerd (CRI, runc, overlayfs) and a plain-HTTP registry on
        127.0.0.1, pushes demo/app:v1, demo/app:v2, demo/tools:1.0,
        demo/sleeper:v1 and demo/gone:v1, pulls them all through CRI, deletes
        demo/gone:v1 from the registry (so the node holds an image that can
        no longer be pulled), and runs the host-network pod default/demo-app
        (init container "tools", container "app"). Both daemons keep running
        after pwlab exits. The CRI endpoint and registry address are printed
        and written to DIR/env as shell KEY=value lines:
          PULLWATCH_CRI_ENDPOINT=unix:///...   PULLWATCH_REGISTRY=127.0.0.1:PORT
        If the lab is already up, up says so and changes nothing.
status  reports whether the lab in DIR is up and prints DIR/env.
down    removes the pod, stops containerd (and its shims) and the registry,
        unmounts and removes the lab's state under DIR.

Needs root and containerd, runc, docker-registry, go (run scripts/install-deps.sh).
Run "pwlab COMMAND --help" for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	// Output piped into e.g. head must not kill pwlab halfway through up:
	// with SIGPIPE notified, writes to a closed stdout just fail. (Unlike
	// ignoring it, this is not inherited by the daemons pwlab starts.)
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "up":
		err = runUp(args)
	case "down":
		err = runDown(args)
	case "status":
		err = runStatus(args)
	case "cluster":
		err = runCluster(args)
	case "kube":
		err = runKube(args)
	case "help", "-h", "-help", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "pwlab: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pwlab:", err)
		os.Exit(1)
	}
}

func newFlags(name, summary string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("pwlab "+name, flag.ContinueOnError)
	dir := fs.String("dir", "", "lab directory for state, logs, pid files and env (required)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: pwlab %s --dir DIR [flags]\n\n%s\n\nFlags:\n", name, summary)
		fs.PrintDefaults()
	}
	return fs, dir
}

func parse(fs *flag.FlagSet, dir *string, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return "", fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *dir == "" {
		fs.Usage()
		return "", errors.New("--dir is required")
	}
	return filepath.Abs(*dir)
}

// lab is the state of a lab directory.
type lab struct {
	dir     string
	cd      *containerd.Containerd // nil if never started
	reg     *registry.Registry     // nil if never started
	cdDir   string
	regDir  string
	envPath string
}

func openLab(dir string) *lab {
	l := &lab{dir: dir, cdDir: filepath.Join(dir, "containerd"), regDir: filepath.Join(dir, "registry"), envPath: filepath.Join(dir, "env")}
	if _, err := os.Stat(filepath.Join(l.cdDir, "containerd.json")); err == nil {
		if cd, err := containerd.Attach(l.cdDir); err == nil {
			l.cd = cd
		}
	}
	if _, err := os.Stat(filepath.Join(l.regDir, "registry.json")); err == nil {
		if reg, err := registry.Attach(l.regDir); err == nil {
			l.reg = reg
		}
	}
	return l
}

func (l *lab) up() bool {
	return l.cd != nil && l.cd.Running() && l.reg != nil && l.reg.Running()
}

func (l *lab) anything() bool {
	if l.cd != nil || l.reg != nil {
		return true
	}
	for _, p := range []string{l.cdDir, l.regDir, l.envPath} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

func runUp(args []string) error {
	fs, dirFlag := newFlags("up", "Start containerd and a registry on 127.0.0.1, push and pull demo images, run pod default/demo-app.")
	port := fs.Int("registry-port", 0, "registry port on 127.0.0.1 (0: a free port)")
	timeout := fs.Duration("timeout", 3*time.Minute, "give up if the lab is not up within this time")
	dir, err := parse(fs, dirFlag, args)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root (containerd and runc need it)")
	}
	l := openLab(dir)
	if l.up() {
		fmt.Printf("pwlab: already up in %s\n", dir)
		return printEnv(l.envPath)
	}
	if l.anything() {
		fmt.Printf("pwlab: found a partial lab in %s; cleaning it up first\n", dir)
		if err := l.down(); err != nil {
			return fmt.Errorf("cleaning up the partial lab: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, *timeout)
	defer cancel()

	if err := l.start(ctx, *port); err != nil {
		fmt.Fprintln(os.Stderr, "pwlab: up failed; stopping what was started")
		if derr := l.down(); derr != nil {
			fmt.Fprintln(os.Stderr, "pwlab: cleanup:", derr)
		}
		return err
	}
	fmt.Printf("pwlab: up in %s\n", dir)
	fmt.Printf("  containerd log: %s\n  registry log:   %s\n", l.cd.LogFile(), l.reg.LogFile())
	return printEnv(l.envPath)
}

func (l *lab) start(ctx context.Context, port int) error {
	step := func(format string, a ...any) { fmt.Printf("pwlab: "+format+"\n", a...) }
	reg, err := registry.Start(ctx, l.regDir, registry.Options{Port: port, Detach: true})
	if err != nil {
		return err
	}
	l.reg = reg
	step("registry on %s (pid %d)", reg.Addr(), reg.Pid())

	type demoImage struct {
		repo, tag string
		sleeper   bool
	}
	images := []demoImage{
		{"demo/app", "v1", false},
		{"demo/app", "v2", false},
		{"demo/tools", "1.0", true}, // runs as the init container
		{"demo/sleeper", "v1", true},
		{"demo/gone", "v1", false},
	}
	digests := map[string]string{}
	for _, im := range images {
		d, err := registry.PushImage(ctx, reg, im.repo, im.tag, registry.ImageOptions{Sleeper: im.sleeper})
		if err != nil {
			return err
		}
		digests[im.repo+":"+im.tag] = d
		step("pushed %s (%s)", reg.Ref(im.repo, im.tag), d)
	}

	cd, err := containerd.Start(ctx, l.cdDir, containerd.Options{SandboxImage: reg.Ref("demo/sleeper", "v1"), Detach: true})
	if err != nil {
		return err
	}
	l.cd = cd
	step("containerd at %s (pid %d)", cd.Endpoint(), cd.Pid())
	for _, im := range images {
		if _, err := cd.PullImage(ctx, reg.Ref(im.repo, im.tag), nil); err != nil {
			return err
		}
	}
	step("pulled all demo images through CRI")
	if err := registry.DeleteManifest(ctx, reg, "demo/gone", digests["demo/gone:v1"]); err != nil {
		return err
	}
	step("deleted %s from the registry (still on the node)", reg.Ref("demo/gone", "v1"))

	sb, err := cd.RunPod(ctx, containerd.PodSpec{
		Namespace: "default", Name: "demo-app",
		Containers: []containerd.ContainerSpec{
			{Name: "tools", Image: reg.Ref("demo/tools", "1.0"), Init: true, Command: []string{"/sleep", "0"}},
			{Name: "app", Image: reg.Ref("demo/sleeper", "v1")},
		},
	})
	if err != nil {
		return err
	}
	step("pod default/demo-app running (sandbox %.12s)", sb)
	return writeEnv(l.envPath, map[string]string{
		"PULLWATCH_CRI_ENDPOINT": cd.Endpoint(),
		"PULLWATCH_REGISTRY":     reg.Addr(),
		"PULLWATCH_LAB_DIR":      l.dir,
	})
}

func runDown(args []string) error {
	fs, dirFlag := newFlags("down", "Stop the lab's pod, containerd (and shims) and registry; unmount and remove its state.")
	dir, err := parse(fs, dirFlag, args)
	if err != nil {
		return err
	}
	l := openLab(dir)
	if !l.anything() {
		fmt.Printf("pwlab: nothing to stop in %s\n", dir)
		return nil
	}
	if err := l.down(); err != nil {
		return err
	}
	fmt.Printf("pwlab: down; removed the lab's state in %s\n", dir)
	return nil
}

// down stops whatever of the lab runs and removes its state (only the
// files and directories pwlab creates; DIR itself goes if it ends up empty).
func (l *lab) down() error {
	var errs []error
	if l.cd == nil {
		if _, err := os.Stat(filepath.Join(l.cdDir, "containerd.json")); err == nil {
			cd, err := containerd.Attach(l.cdDir)
			if err != nil {
				errs = append(errs, err)
			}
			l.cd = cd
		}
	}
	if l.cd != nil {
		if err := l.cd.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("containerd: %w", err))
		}
	}
	if l.reg != nil {
		if err := l.reg.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("registry: %w", err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // keep the state for a look, and a second down
	}
	for _, p := range []string{l.cdDir, l.regDir, l.envPath} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	_ = os.Remove(l.dir) // only if empty
	l.cd, l.reg = nil, nil
	return errors.Join(errs...)
}

func runStatus(args []string) error {
	fs, dirFlag := newFlags("status", "Say whether the lab in DIR is up, and print its env.")
	dir, err := parse(fs, dirFlag, args)
	if err != nil {
		return err
	}
	l := openLab(dir)
	state := func(running bool, pid int) string {
		if running {
			return fmt.Sprintf("running (pid %d)", pid)
		}
		return "not running"
	}
	switch {
	case l.up():
		fmt.Printf("pwlab: up in %s\n", dir)
	case l.anything():
		fmt.Printf("pwlab: partially up in %s (run pwlab down --dir %s)\n", dir, dir)
	default:
		fmt.Printf("pwlab: not up in %s\n", dir)
		return nil
	}
	if l.cd != nil {
		fmt.Printf("  containerd: %s, %s\n", state(l.cd.Running(), l.cd.Pid()), l.cd.Endpoint())
	}
	if l.reg != nil {
		fmt.Printf("  registry:   %s, %s\n", state(l.reg.Running(), l.reg.Pid()), l.reg.Addr())
	}
	return printEnv(l.envPath)
}

func writeEnv(path string, env map[string]string) error {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, shellQuote(env[k]))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func printEnv(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, _ = io.Copy(os.Stdout, f) // best effort: stdout may be a closed pipe
	return nil
}

// shellQuote leaves plain values alone and single-quotes anything else.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.,:/@+=%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
