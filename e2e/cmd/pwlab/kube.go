package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

const kubeUsage = `pwlab kube — the cluster in a box with real kubelets, for make demo-cluster

Usage:
  pwlab kube up    --dir DIR [--nodes N] [--images REGISTRY] [--tag TAG]
  pwlab kube down  --dir DIR

up brings up e2e/harness/kubecluster in DIR: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and N nodes (default 2, two zones),
each a real kubelet with its own containerd, kube-proxy, network and mount
namespaces; a TLS registry; then pushes the images 'make images' built
(REGISTRY/pullwatch-agent:TAG, REGISTRY/pullwatch-aggregator:TAG from
buildah's local storage) into it, installs deploy/ with kubectl apply -k
through an overlay that only renames the images, and starts Prometheus
(kubernetes_sd, the shipped rules). It prints the summary, kubectl get pods
-A -o wide and a KUBECONFIG=<path> line. The cluster is held by a background
pwlab process until pwlab kube down.

Needs root, the Debian packages (scripts/install-deps.sh), the kube binaries
(scripts/build-kube.sh) and the images (make images).
`

func runKube(args []string) error {
	if len(args) < 1 {
		fmt.Fprint(os.Stderr, kubeUsage)
		return errors.New("pwlab kube: missing command")
	}
	switch args[0] {
	case "up":
		return kubeUp(args[1:])
	case "serve":
		return kubeServe(args[1:])
	case "down":
		return kubeDown(args[1:])
	case "help", "-h", "-help", "--help":
		fmt.Print(kubeUsage)
		return nil
	}
	fmt.Fprint(os.Stderr, kubeUsage)
	return fmt.Errorf("pwlab kube: unknown command %q", args[0])
}

// kubeFiles are the files pwlab kube keeps in DIR.
type kubeFiles struct{ dir string }

func (f kubeFiles) pid() string     { return filepath.Join(f.dir, "kube-serve.pid") }
func (f kubeFiles) log() string     { return filepath.Join(f.dir, "kube-serve.log") }
func (f kubeFiles) summary() string { return filepath.Join(f.dir, "kube-summary.txt") }
func (f kubeFiles) failed() string  { return filepath.Join(f.dir, "kube-failed.txt") }

func servingPid(f kubeFiles) int {
	b, err := os.ReadFile(f.pid())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// kubeUp starts `pwlab kube serve` in its own session and waits until it
// writes the summary (or says why it failed).
func kubeUp(args []string) error {
	fs, dirFlag := newFlags("kube up", "Bring up the real-kubelet cluster in a box with deploy/ installed.")
	nodes := fs.Int("nodes", 2, "number of nodes")
	images := fs.String("images", "localhost/pullwatch", "where make images put the images (its REGISTRY)")
	tag := fs.String("tag", "dev", "the images' tag (make images TAG=...)")
	runtime := fs.String("runtime", os.Getenv(kubecluster.RuntimeEnv), "the nodes' containerd: containerd-1.6 (Debian's; default) or one scripts/build-runtimes.sh built (containerd-2.4, ...); default $"+kubecluster.RuntimeEnv)
	timeout := fs.Duration("timeout", 15*time.Minute, "give up if the cluster is not up within this time")
	dir, err := parse(fs, dirFlag, args)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root (namespaces, mounts, containerd and the kubelet need it)")
	}
	f := kubeFiles{dir}
	if servingPid(f) != 0 {
		fmt.Printf("pwlab: a kube cluster is already up in %s\n", dir)
		return printFile(f.summary())
	}
	_ = os.Remove(f.summary())
	_ = os.Remove(f.failed())
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(f.log(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, "kube", "serve", "--dir", dir, "--nodes", strconv.Itoa(*nodes), "--images", *images, "--tag", *tag, "--runtime", *runtime)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	if err := os.WriteFile(f.pid(), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return err
	}
	_ = cmd.Process.Release()
	fmt.Printf("pwlab: bringing the kube cluster up in %s (log: %s)\n", dir, f.log())
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(f.summary()); err == nil {
			return printFile(f.summary())
		}
		if b, err := os.ReadFile(f.failed()); err == nil {
			return fmt.Errorf("the kube cluster did not come up: %s\nlog: %s", b, f.log())
		}
		if servingPid(f) == 0 {
			return fmt.Errorf("pwlab kube serve exited; log %s (tail):\n%s", f.log(), proc.LogTail(f.log(), 30))
		}
		time.Sleep(2 * time.Second)
	}
	return fmt.Errorf("the kube cluster is not up after %s; log: %s", *timeout, f.log())
}

// kubeServe brings the cluster up, writes the summary, and holds it until
// SIGTERM or SIGINT, then stops it.
func kubeServe(args []string) error {
	fs, dirFlag := newFlags("kube serve", "Hold the real-kubelet cluster (started by pwlab kube up).")
	nodes := fs.Int("nodes", 2, "number of nodes")
	images := fs.String("images", "localhost/pullwatch", "where make images put the images")
	tag := fs.String("tag", "dev", "the images' tag")
	runtime := fs.String("runtime", os.Getenv(kubecluster.RuntimeEnv), "the nodes' containerd (see pwlab kube up)")
	dir, err := parse(fs, dirFlag, args)
	if err != nil {
		return err
	}
	f := kubeFiles{dir}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fail := func(err error) error {
		_ = os.WriteFile(f.failed(), []byte(err.Error()), 0o644)
		return err
	}
	root, err := checkout.Root()
	if err != nil {
		return fail(err)
	}
	startCtx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	// A box an earlier run left in this directory (its pwlab killed) is
	// stopped, and its files go: the new box's subnet, and so its
	// registry's certificate, may differ.
	boxDir := filepath.Join(dir, "kube")
	if removed, err := kubecluster.CleanupDir(startCtx, boxDir); err != nil {
		return fail(fmt.Errorf("stopping what an earlier run left: %w", err))
	} else if len(removed) > 0 {
		fmt.Printf("pwlab: stopped what earlier runs left: %s\n", strings.Join(removed, "; "))
	}
	if err := os.RemoveAll(boxDir); err != nil {
		return fail(err)
	}
	c, err := kubecluster.Start(startCtx, kubecluster.Options{Dir: boxDir, Nodes: *nodes, Runtime: *runtime, Log: os.Stdout})
	if err != nil {
		return fail(err)
	}
	defer func() {
		fmt.Println("pwlab: stopping the kube cluster")
		if err := c.Stop(); err != nil {
			fmt.Println("pwlab: stop:", err)
		}
		_ = os.Remove(f.pid())
		_ = os.Remove(f.summary())
	}()
	agent, aggregator, err := c.PushImages(startCtx, *images+"/pullwatch-agent:"+*tag, *images+"/pullwatch-aggregator:"+*tag, *tag)
	if err != nil {
		return fail(err)
	}
	overlay, err := c.Overlay(filepath.Join(root, "deploy"), agent, aggregator)
	if err != nil {
		return fail(err)
	}
	if err := c.Install(startCtx, overlay, 5*time.Minute); err != nil {
		return fail(err)
	}
	prom, err := c.StartPrometheus(startCtx, filepath.Join(root, "deploy", "rules", "pullwatch.rules.yaml"))
	if err != nil {
		return fail(err)
	}
	defer prom.Stop()
	pods, _ := c.Kubectl(startCtx, "get", "pods", "-A", "-o", "wide")
	var b strings.Builder
	fmt.Fprintf(&b, "pullwatch on a real-kubelet cluster in a box (%d nodes on %s, kube-apiserver %s)\n", len(c.Nodes), c.Runtime().Name, c.API.URL())
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  %s at %s, pods %s\n", n.Name(), n.IP(), n.PodCIDR())
	}
	fmt.Fprintf(&b, "  registry %s, Prometheus %s (try: pullwatch_node_image_status)\n", c.Registry.URL(), prom.URL())
	fmt.Fprintf(&b, "  overlay %s (deploy/ with the box's image names)\n\n", overlay)
	fmt.Fprintf(&b, "kubectl get pods -A -o wide:\n%s\n", pods)
	fmt.Fprintf(&b, "status page: KUBECONFIG=%s kubectl -n pullwatch port-forward svc/pullwatch-aggregator 8080:8080\n", c.Kubeconfig)
	// The aggregator authorizes every HTTP reader (--http-auth).
	// HTTPS (PULLWATCH_HTTP_TLS), verified with the installed CA.
	caFile, _ := c.AggregatorCA(startCtx)
	fmt.Fprintf(&b, "  then: curl --cacert %s --resolve %s:8080:127.0.0.1 -H \"Authorization: Bearer $(cat %s)\" https://%s:8080/ (the token the aggregator keeps in Secret %s: pullwatch-metrics-scraper, audience pullwatch-metrics)\n",
		caFile, kubecluster.AggregatorServerName, c.ScrapeTokenFile(), kubecluster.AggregatorServerName, kubecluster.ScrapeTokenSecret)
	fmt.Fprintf(&b, "KUBECONFIG=%s\n", c.Kubeconfig)
	fmt.Fprintf(&b, "kubectl: %s\nrunning until: make demo-down\n", filepath.Join(c.BinDir(), "kubectl"))
	if err := os.WriteFile(f.summary(), []byte(b.String()), 0o644); err != nil {
		return fail(err)
	}
	<-ctx.Done()
	return nil
}

// kubeDown stops the serving pwlab (which stops the cluster) and waits.
func kubeDown(args []string) error {
	fs, dirFlag := newFlags("kube down", "Stop the real-kubelet cluster in a box.")
	dir, err := parse(fs, dirFlag, args)
	if err != nil {
		return err
	}
	f := kubeFiles{dir}
	pid := servingPid(f)
	if pid != 0 {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 120 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(time.Second)
		}
		if syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("pwlab kube serve (pid %d) did not stop within 2m; see %s", pid, f.log())
		}
		fmt.Println("pwlab: kube cluster stopped")
	}
	// Whatever is still there (pwlab kube serve was killed, or its Stop
	// failed halfway), and what other killed runs left.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	removed, err := kubecluster.CleanupDir(ctx, filepath.Join(dir, "kube"))
	if len(removed) > 0 {
		fmt.Printf("pwlab: stopped what was left: %s\n", strings.Join(removed, "; "))
	}
	if err != nil {
		return err
	}
	if pid == 0 && len(removed) == 0 {
		fmt.Println("pwlab: no kube cluster is up in", dir)
	}
	_ = os.Remove(f.pid())
	return nil
}

func printFile(p string) error {
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}
