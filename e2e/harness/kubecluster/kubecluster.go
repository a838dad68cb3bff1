// Package kubecluster makes the cluster in a box a real Kubernetes cluster:
// etcd and kube-apiserver (e2e/harness/kubeapi, reachable from the nodes on
// the box bridge's address), kube-controller-manager and kube-scheduler,
// and N nodes (e2e/harness/kubenode), each a real kubelet with its own
// containerd, network and mount namespaces, in two zones; a TLS registry in
// a namespace of its own holds every image the cluster runs (nothing can be
// pulled from outside). What a user installs — deploy/ with kubectl apply
// -k, the images built from the Dockerfiles — runs on it unchanged.
//
// Every binary comes from the one pinned k8s.io/kubernetes (hack/kube/,
// scripts/build-kube.sh).
package kubecluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/kubenode"
	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
	"github.com/pullwatch/pullwatch/e2e/harness/runtimes"
)

// Ranges of the cluster.
const (
	ClusterCIDR = "10.244.0.0/16"
	ServiceCIDR = kubeapi.ServiceClusterIPRange
	// RegistryPort is where the box's registry listens in its namespace.
	RegistryPort = 5000
	// MirrorPort is where the registry's mirror listens, in the same
	// namespace: every node's hosts.toml tries it first.
	MirrorPort = 5001
	// PauseRepo is the sandbox image's repository in the box's registry.
	PauseRepo = "box/pause"
)

// RuntimeEnv names the containerd every node runs when Options.Runtime is
// empty: "containerd-1.6" (Debian's, the default when unset) or a release
// line scripts/build-runtimes.sh builds ("containerd-1.7", "containerd-2.0",
// "containerd-2.4"). make demo-cluster RUNTIME=... and make e2e-installed
// set it.
const RuntimeEnv = "PULLWATCH_BOX_RUNTIME"

// DefaultRuntime is Debian's containerd 1.6 (scripts/deps.txt).
const DefaultRuntime = "containerd-1.6"

// Runtime finds the containerd named name ("" or DefaultRuntime: Debian's
// 1.6, exactly as the box ran before runtimes were selectable). A release
// line that is pinned but not built is an error naming the script that
// builds it.
func Runtime(name string) (runtimes.Containerd, error) {
	if name == "" || name == DefaultRuntime {
		return kubenode.Debian16, nil
	}
	all, missing := runtimes.Containerds()
	var names []string
	for _, c := range all {
		if c.Name == name {
			return c, nil
		}
		names = append(names, c.Name)
	}
	if strings.Contains(missing, name+" (") {
		return runtimes.Containerd{}, fmt.Errorf("kubecluster: %s=%s is not built here: run scripts/build-runtimes.sh (make runtimes) first", RuntimeEnv, name)
	}
	why := "built here: " + strings.Join(names, ", ")
	if missing != "" {
		why += "; missing: " + missing
	}
	return runtimes.Containerd{}, fmt.Errorf("kubecluster: %s=%s: no such runtime (%s); scripts/build-runtimes.sh builds the pinned ones", RuntimeEnv, name, why)
}

// Binaries in the kube bin directory besides kube-apiserver and etcd
// (scripts/build-kube.sh builds them all).
var Binaries = []string{"kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl", "prometheus"}

// Options configure Start.
type Options struct {
	// Dir holds every part's files and logs (created).
	Dir string
	// Nodes is the number of nodes (default 2), named node-1 … node-N, in
	// zones zone-a and zone-b alternately.
	Nodes int
	// BinDir holds the kube binaries (default: as kubeapi.LocateBinaries).
	BinDir string
	// Runtime is the containerd every node runs (see RuntimeEnv; default:
	// $PULLWATCH_BOX_RUNTIME, else Debian's 1.6).
	Runtime string
	// CredentialProvider is a kubelet credential provider plugin built
	// from e2e/harness/credprovider: when set, the box also runs a private
	// registry (Private) whose credential only that plugin gives, through a
	// provider with tokenAttributes (KEP-4412; see credprovider.go).
	CredentialProvider string
	// Detach lets the cluster outlive this process (make demo-cluster).
	Detach bool
	// Log receives one line per step (nil: discarded).
	Log io.Writer
}

// Cluster is a running cluster.
type Cluster struct {
	opts     Options
	dir      string
	bin      string
	runtime  runtimes.Containerd
	log      io.Writer
	mu       sync.Mutex
	Net      *netns.Network
	API      *kubeapi.Cluster
	Registry *registry.Registry
	// Mirror holds the same images as Registry (Push and DeleteImage keep
	// them in step) and is the first endpoint every node's hosts.toml
	// names for Registry's host, as a pull-through or replicated mirror is.
	Mirror *registry.Registry
	// Private is the registry only the kubelets' token credential
	// provider unlocks (nil without Options.CredentialProvider).
	Private *registry.Registry
	// RegNS is the namespace of Registry, Mirror and Private.
	RegNS *netns.Namespace
	Nodes []*kubenode.Node
	procs []*proc.Process
	// Kubeconfig is the admin's kubeconfig, usable from this machine.
	Kubeconfig string
	// stopSync ends syncScrapeToken's loop.
	stopSync []context.CancelFunc
}

// Zone is node i's zone (1-based): zone-a, zone-b, zone-a, ...
func Zone(i int) string { return "zone-" + string(rune('a'+(i-1)%2)) }

// Start brings the cluster up and returns once every Node is Ready.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Nodes <= 0 {
		opts.Nodes = 2
	}
	if opts.Nodes > 7 {
		return nil, fmt.Errorf("kubecluster: %d nodes: at most 7 (each box has eight pod ranges)", opts.Nodes)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, dir: dir, log: opts.Log}
	if c.log == nil {
		c.log = io.Discard
	}
	if err := c.start(ctx); err != nil {
		_ = c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) logf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.log, "kubecluster: "+format+"\n", args...)
}

func (c *Cluster) start(ctx context.Context) error {
	bins, err := kubeapi.LocateBinaries(c.opts.BinDir)
	if err != nil {
		return err
	}
	c.bin = filepath.Dir(bins.APIServer)
	name := c.opts.Runtime
	if name == "" {
		name = os.Getenv(RuntimeEnv)
	}
	if c.runtime, err = Runtime(name); err != nil {
		return err
	}
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(c.bin, b)); err != nil {
			return fmt.Errorf("%w: %s missing in %s: run scripts/build-kube.sh", kubeapi.ErrNoBinaries, b, c.bin)
		}
	}
	keep := ""
	if c.opts.Detach {
		keep = c.dir
	}
	// What killed runs left (their kubelets, containerds, control planes,
	// Prometheus, registries, pods) goes first.
	if removed, err := CleanupStale(ctx); err != nil {
		c.logf("cleaning up earlier runs: %v", err)
	} else if len(removed) > 0 {
		c.logf("stopped what earlier runs left: %s", strings.Join(removed, "; "))
	}
	if c.Net, err = netns.Create(ctx, netns.Options{KeepWhile: keep}); err != nil {
		return err
	}
	if err := c.writeRecord(); err != nil {
		return fmt.Errorf("kubecluster: record the box in %s: %w", RecordDir, err)
	}
	gw := c.Net.Gateway()
	c.logf("network %s: bridge %s %s, gateway %s", c.Net.ID(), c.Net.Bridge(), c.Net.Subnet(), gw)

	if err := c.startRegistry(ctx); err != nil {
		return err
	}
	if err := c.startControlPlane(ctx, gw); err != nil {
		return err
	}
	if err := c.allowProviderAudience(ctx); err != nil {
		return err
	}
	if err := c.startNodes(ctx, gw); err != nil {
		return err
	}
	return c.WaitNodesReady(ctx, 3*time.Minute)
}

func (c *Cluster) startRegistry(ctx context.Context) error {
	ns, err := c.Net.AddNamespace(ctx, "registry")
	if err != nil {
		return err
	}
	c.RegNS = ns
	c.Registry, err = registry.Start(ctx, filepath.Join(c.dir, "registry"), registry.Options{
		Host: ns.IP().String(), Port: RegistryPort, TLS: true, Netns: ns.Netns(), Detach: c.opts.Detach,
	})
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	c.Mirror, err = registry.Start(ctx, filepath.Join(c.dir, "mirror"), registry.Options{
		Host: ns.IP().String(), Port: MirrorPort, TLS: true, Netns: ns.Netns(), Detach: c.opts.Detach,
	})
	if err != nil {
		return fmt.Errorf("mirror: %w", err)
	}
	if _, err := c.PushSleeper(ctx, PauseRepo, "1"); err != nil {
		return fmt.Errorf("push the sandbox image: %w", err)
	}
	if c.opts.CredentialProvider != "" {
		if err := c.startPrivateRegistry(ctx); err != nil {
			return err
		}
	}
	c.logf("registry %s and its mirror %s in namespace %s", c.Registry.URL(), c.Mirror.URL(), ns.Netns())
	return nil
}

// PushSleeper pushes the same small image to the registry and its mirror
// and returns its digest.
func (c *Cluster) PushSleeper(ctx context.Context, repo, tag string) (string, error) {
	var digest string
	for _, r := range []*registry.Registry{c.Registry, c.Mirror} {
		d, err := registry.PushSleeper(ctx, r, repo, tag)
		if err != nil {
			return "", fmt.Errorf("push %s to %s: %w", repo, r.Addr(), err)
		}
		if digest != "" && d != digest {
			return "", fmt.Errorf("push %s: digest %s in the registry, %s in the mirror", repo, digest, d)
		}
		digest = d
	}
	return digest, nil
}

// DeleteImage deletes repo@digest from the registry and its mirror: the
// image is gone for every node.
func (c *Cluster) DeleteImage(ctx context.Context, repo, digest string) error {
	for _, r := range []*registry.Registry{c.Registry, c.Mirror} {
		if err := registry.DeleteManifest(ctx, r, repo, digest); err != nil {
			return fmt.Errorf("delete %s@%s from %s: %w", repo, digest, r.Addr(), err)
		}
	}
	return nil
}

func (c *Cluster) startControlPlane(ctx context.Context, gw net.IP) error {
	var err error
	c.API, err = kubeapi.Start(ctx, filepath.Join(c.dir, "control-plane"), kubeapi.Options{
		BinDir:            c.bin,
		AuthorizationMode: "Node,RBAC",
		ServingIPs:        []net.IP{gw},
		FullCluster:       true,
		APIServerArgs: []string{
			// Reachable from the nodes on the bridge, advertised there as
			// the kubernetes Service's endpoint (kube-proxy sends
			// 10.96.0.1:443 to it).
			"--bind-address=0.0.0.0",
			"--advertise-address=" + gw.String(),
			"--enable-admission-plugins=NodeRestriction",
		},
	})
	if err != nil {
		return err
	}
	c.Kubeconfig = c.API.Kubeconfig()
	c.logf("kube-apiserver %s (advertised on %s)", c.API.URL(), gw)
	cp := filepath.Join(c.dir, "control-plane")
	specs := []proc.Spec{{
		Name: "kube-controller-manager",
		Path: filepath.Join(c.bin, "kube-controller-manager"),
		Args: []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--authentication-kubeconfig=" + c.Kubeconfig,
			"--authorization-kubeconfig=" + c.Kubeconfig,
			"--service-account-private-key-file=" + c.API.SAKeyFile(),
			"--root-ca-file=" + c.API.CAFile(),
			"--cluster-cidr=" + ClusterCIDR,
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--leader-elect=false",
			"--secure-port=0",
			"--use-service-account-credentials=false",
			"--controllers=*",
			"--v=1",
		},
		Dir: cp, LogFile: filepath.Join(cp, "kube-controller-manager.log"), Detach: c.opts.Detach,
	}, {
		Name: "kube-scheduler",
		Path: filepath.Join(c.bin, "kube-scheduler"),
		Args: []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--authentication-kubeconfig=" + c.Kubeconfig,
			"--authorization-kubeconfig=" + c.Kubeconfig,
			"--leader-elect=false",
			"--secure-port=0",
			"--v=1",
		},
		Dir: cp, LogFile: filepath.Join(cp, "kube-scheduler.log"), Detach: c.opts.Detach,
	}}
	for _, s := range specs {
		p, err := proc.Start(s)
		if err != nil {
			return err
		}
		c.procs = append(c.procs, p)
	}
	return nil
}

func (c *Cluster) startNodes(ctx context.Context, gw net.IP) error {
	hostsTOML, caPEM, err := c.registryHosts()
	if err != nil {
		return err
	}
	for i := 1; i <= c.opts.Nodes; i++ {
		name := "node-" + strconv.Itoa(i)
		ns, err := c.Net.AddNamespace(ctx, name)
		if err != nil {
			return err
		}
		kubeletKC, err := c.nodeKubeconfig("system:node:"+name, []string{"system:nodes"}, gw)
		if err != nil {
			return err
		}
		proxyKC, err := c.nodeKubeconfig("system:kube-proxy", nil, gw)
		if err != nil {
			return err
		}
		files, executables, kubeletArgs, err := c.credentialProviderNode()
		if err != nil {
			return err
		}
		n, err := kubenode.Start(ctx, kubenode.Options{
			Name: name, Zone: Zone(i), NS: ns, Gateway: gw,
			Dir:     filepath.Join(c.dir, name),
			Kubelet: filepath.Join(c.bin, "kubelet"), KubeProxy: filepath.Join(c.bin, "kube-proxy"),
			KubeletKubeconfig: kubeletKC, ProxyKubeconfig: proxyKC,
			ClientCAFile: c.API.CAFile(),
			PodCIDR:      c.podCIDR(i), ClusterCIDR: ClusterCIDR, ServiceCIDR: ServiceCIDR,
			SandboxImage: c.Registry.Ref(PauseRepo, "1"),
			Hosts:        map[string]string{c.Registry.Addr(): hostsTOML},
			Runtime:      c.runtime,
			Files:        files, Executables: executables, KubeletArgs: kubeletArgs,
			Detach: c.opts.Detach,
		})
		if err != nil {
			return err
		}
		// The registry's and the mirror's CAs, where the node's hosts.toml
		// says they are.
		for path, pem := range caPEM {
			if err := os.WriteFile(n.HostPath(path), pem, 0o644); err != nil {
				return err
			}
		}
		c.Nodes = append(c.Nodes, n)
		c.logf("%s (%s) at %s: kubelet, kube-proxy, %s", name, Zone(i), ns.IP(), c.runtime.Name)
	}
	// Pod ranges reach each other over the bridge, and this machine (where
	// Prometheus runs) reaches every pod.
	for _, a := range c.Nodes {
		for _, b := range c.Nodes {
			if a != b {
				if err := a.Route(ctx, b); err != nil {
					return err
				}
			}
		}
		if out, err := exec.CommandContext(ctx, "ip", "route", "replace", a.PodCIDR(), "via", a.IP().String(), "dev", c.Net.Bridge()).CombinedOutput(); err != nil {
			return fmt.Errorf("route %s: %w: %s", a.PodCIDR(), err, out)
		}
	}
	return nil
}

// podCIDR is node i's pod range (1-based): a /24 of ClusterCIDR that no
// other box on this machine uses at the same time, because this machine's
// routes to the pods (for Prometheus) are global: the eight /24s after
// 10.244.(8·k).0, k from the box's own subnet (10.203.k.0/24, unique while
// the box runs).
func (c *Cluster) podCIDR(i int) string {
	k := c.Net.Gateway().To4()[2] % 32
	return fmt.Sprintf("10.244.%d.0/24", int(k)*8+i)
}

// nodeKubeconfig is a kubeconfig for user (a client certificate of the
// cluster CA) that reaches the API server on the bridge's address, as a
// node does.
func (c *Cluster) nodeKubeconfig(user string, groups []string, gw net.IP) (string, error) {
	path, err := c.API.KubeconfigFor(user, groups)
	if err != nil {
		return "", err
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return "", err
	}
	u, err := url.Parse(c.API.URL())
	if err != nil {
		return "", err
	}
	for _, cl := range cfg.Clusters {
		cl.Server = "https://" + net.JoinHostPort(gw.String(), u.Port())
	}
	return path, clientcmd.WriteToFile(*cfg, path)
}

// registryCAPath is where a node keeps a CA for the registry host's
// endpoints: beside its hosts.toml, as containerd's documentation does it.
func registryCAPath(host, file string) string {
	return "/etc/containerd/certs.d/" + host + "/" + file
}

// registryHosts is every node's hosts.toml for the registry's host and the
// CA files it names (node path → PEM).
func (c *Cluster) registryHosts() (hostsTOML string, caPEM map[string][]byte, err error) {
	caPEM = map[string][]byte{}
	host := c.Registry.Addr()
	for file, r := range map[string]*registry.Registry{"ca.crt": c.Registry, "mirror-ca.crt": c.Mirror} {
		pem, err := os.ReadFile(r.CAFile())
		if err != nil {
			return "", nil, err
		}
		caPEM[registryCAPath(host, file)] = pem
	}
	// The mirror first, then the registry as the server, each with its CA.
	// No [host."URL"] entry for the registry itself: it would be tried
	// before the server entry, and on a 404 containerd would go on to the
	// server and report that one's error instead of the "not found".
	// (containerd 1.6 also refuses a hosts.toml without any [host] tree,
	// containerd#10027; the mirror's entry is one.)
	hostsTOML = fmt.Sprintf("server = %q\nca = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n",
		c.Registry.URL(), registryCAPath(host, "ca.crt"), c.Mirror.URL(), registryCAPath(host, "mirror-ca.crt"))
	return hostsTOML, caPEM, nil
}

// Client is the admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.API.Client() }

// WaitNodesReady waits until every node's Node object is Ready.
func (c *Cluster) WaitNodesReady(ctx context.Context, timeout time.Duration) error {
	err := proc.Poll(ctx, timeout, time.Second, func() error {
		nodes, err := c.Client().CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		ready := map[string]bool{}
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready[n.Name] = true
				}
			}
		}
		var missing []string
		for _, n := range c.Nodes {
			if !ready[n.Name()] {
				missing = append(missing, n.Name())
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("not Ready: %s", strings.Join(missing, ", "))
		}
		return nil
	})
	if err != nil {
		var tails []string
		for _, n := range c.Nodes {
			tails = append(tails, n.Name()+" kubelet.log (tail):\n"+proc.LogTail(n.KubeletLog(), 25))
		}
		return fmt.Errorf("nodes: %w\n%s", err, strings.Join(tails, "\n"))
	}
	c.logf("%d nodes Ready", len(c.Nodes))
	return nil
}

// Kubectl runs the cluster's kubectl with the admin kubeconfig.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Stop stops every node, the control plane and the registry, and removes
// the network.
func (c *Cluster) Stop() error {
	var errs []error
	c.mu.Lock()
	for _, cancel := range c.stopSync {
		cancel()
	}
	c.mu.Unlock()
	for _, n := range c.Nodes {
		if err := n.Stop(); err != nil {
			errs = append(errs, err)
		}
		_, _ = exec.Command("ip", "route", "del", n.PodCIDR()).CombinedOutput()
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		if err := c.procs[i].Stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if c.API != nil {
		if err := c.API.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range []*registry.Registry{c.Registry, c.Mirror, c.Private} {
		if r != nil {
			if err := r.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.Net != nil {
		if err := c.Net.Delete(context.Background()); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		// Kept after a failed Stop: the next run's CleanupStale finishes it.
		errs = append(errs, c.removeRecord())
	}
	return errors.Join(errs...)
}

// Runtime is the containerd every node runs.
func (c *Cluster) Runtime() runtimes.Containerd { return c.runtime }

// BinDir is the directory of the kube binaries (kubectl among them).
func (c *Cluster) BinDir() string { return c.bin }
