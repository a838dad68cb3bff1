// Package cluster is pullwatch's cluster in a box: several "nodes", each a
// network namespace with its own containerd (own root, state and socket),
// its own real pods and its own pullwatch-agent; an upstream registry (TLS,
// and htpasswd auth when the agent can be given pull credentials) and a
// mirror registry (TLS) in namespaces of their own, with hosts.toml on
// every node putting the mirror first; pullwatch-aggregator in the root
// namespace on the bridge's address; a real Prometheus scraping it with the
// shipped rules and a real Alertmanager. Faults are injected per node
// (iptables in the node's namespace) or per part (stop a registry, delete a
// manifest, kill an agent, restart the aggregator).
//
// No traffic leaves the machine: see e2e/harness/netns.
//
// The scenario tests in this package run on one such cluster; pwlab
// cluster up|down|status (make demo) brings one up to look at.
package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/alertmanager"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// RegistryPort is where both registries listen in their namespaces.
const RegistryPort = 5000

// Options configure Start.
type Options struct {
	// Dir holds every part's state and logs (required; created).
	Dir string
	// Bin has pullwatch-agent and pullwatch-aggregator (default:
	// checkout.Binaries("", Dir/bin)).
	Bin string
	// Nodes is the number of nodes, named node-1 … node-N (default 3).
	Nodes int
	// Interval is the agents' --interval (default 2s).
	Interval time.Duration
	// StaleAfter is the aggregator's --stale-after (default 3×Interval).
	StaleAfter time.Duration
	// RuleFiles are the Prometheus rule files (default: RuleFiles("")).
	// AlertFor, when set, replaces every for: in copies of them.
	RuleFiles []string
	AlertFor  string
	// WebhookURL is Alertmanager's receiver (empty: alerts go nowhere).
	WebhookURL string
	// HTTPPort is the aggregator's HTTP port on 127.0.0.1 (0: a free one).
	HTTPPort int
	// Subnet is the bridge's /24 (default: a free 10.203.N.0/24).
	Subnet string
	// NoAuth serves the upstream without htpasswd even when the agent
	// takes --docker-config.
	NoAuth bool
	// Detach starts every daemon in its own session so the cluster
	// outlives this process (pwlab); the network then lives as long as Dir.
	Detach bool
	// Log receives one line per step (nil: discarded).
	Log io.Writer
}

// Image is one image of the cluster: pushed to both registries under the
// same name and pulled through CRI on Nodes.
type Image struct {
	Repo string `json:"repo"`
	Tag  string `json:"tag"`
	// Ref is the reference nodes pull (the upstream's name).
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
	// Nodes pull it; Pods run it there (ns/name).
	Nodes []string `json:"nodes"`
	Pods  []string `json:"pods,omitempty"`
}

// The images every cluster has.
const (
	PauseRepo  = "cluster/pause"  // the sandbox image; no container uses it
	WebRepo    = "cluster/web"    // pod default/web on every node
	WorkerRepo = "cluster/worker" // pod batch/worker on node-1 and node-3
	ToolsRepo  = "cluster/tools"  // worker's init container; cached on every node
)

// Cluster is a running cluster in a box.
type Cluster struct {
	opts  Options
	dir   string
	log   io.Writer
	Net   *netns.Network
	Nodes []*Node
	// Upstream and Mirror are the registries.
	Upstream, Mirror *Registry
	Aggregator       *Aggregator
	// Prometheus is nil after Attach (see PrometheusAddr).
	Prometheus     *prometheus.Prometheus
	PrometheusAddr string
	promProc       *proc.Process
	Alertmanager   *alertmanager.Alertmanager
	Images         []Image
	// Auth is true when the upstream asks for credentials and every agent
	// gets them through --docker-config; User and Password are those.
	Auth           bool
	User, Password string
	// AuthNote says why Auth is off, when it is.
	AuthNote string
	// ShippedFor is each alert's for: as shipped (before AlertFor).
	ShippedFor map[string]string
	AlertFor   string
	agentFlags map[string]bool
	mu         sync.Mutex // serializes logf
}

// Registry is a registry in its own namespace.
type Registry struct {
	*registry.Registry
	Name string
	NS   *netns.Namespace
}

// IP is the registry's address on the bridge.
func (r *Registry) IP() net.IP { return r.NS.IP() }

// Endpoint is the endpoint URL the agents report for it ("https://IP:PORT/v2").
func (r *Registry) Endpoint() string { return r.URL() + "/v2" }

// Node is one node: a namespace with a containerd and an agent.
type Node struct {
	Name       string
	NS         *netns.Namespace
	Containerd *containerd.Containerd
	c          *Cluster
	agent      *proc.Process
	agentArgs  []string
	agentLog   string
	// DockerConfig is the config.json the agent reads ("" without auth).
	DockerConfig string
}

// Aggregator is pullwatch-aggregator in the root namespace.
type Aggregator struct {
	// GRPC is on the bridge's address (the agents dial it from their
	// namespaces); HTTP on 127.0.0.1.
	GRPC, HTTP string
	args       []string
	bin        string
	log        string
	detach     bool
	proc       *proc.Process
}

// URL is the status page, http://HTTP/.
func (a *Aggregator) URL() string { return "http://" + a.HTTP + "/" }

// LogFile is the aggregator's log.
func (a *Aggregator) LogFile() string { return a.log }

// Pid is the aggregator's process id (0 when not running).
func (a *Aggregator) Pid() int {
	if a.proc == nil || a.proc.Exited() {
		return 0
	}
	return a.proc.Pid()
}

// Start brings a cluster up. On error everything started is stopped again.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Dir == "" {
		return nil, errors.New("cluster: Options.Dir is required")
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 2 || opts.Nodes > 50 {
		return nil, fmt.Errorf("cluster: %d nodes: want 2 to 50", opts.Nodes)
	}
	if opts.Interval == 0 {
		opts.Interval = 2 * time.Second
	}
	if opts.StaleAfter == 0 {
		opts.StaleAfter = 3 * opts.Interval
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if opts.Bin == "" {
		if opts.Bin, err = checkout.Binaries(ctx, "", filepath.Join(dir, "bin")); err != nil {
			return nil, err
		}
	}
	if opts.RuleFiles == nil {
		if opts.RuleFiles, err = RuleFiles(""); err != nil {
			return nil, err
		}
	}
	c := &Cluster{opts: opts, dir: dir, log: opts.Log, AlertFor: opts.AlertFor}
	if err := c.start(ctx); err != nil {
		c.logf("start failed; stopping what was started")
		if serr := c.Stop(); serr != nil {
			err = fmt.Errorf("%w\n(stopping: %v)", err, serr)
		}
		return nil, err
	}
	return c, nil
}

func (c *Cluster) logf(format string, a ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.log, "cluster: "+format+"\n", a...)
}

func (c *Cluster) start(ctx context.Context) error {
	t0 := time.Now()
	var err error
	agent := filepath.Join(c.opts.Bin, checkout.AgentBinary)
	if c.agentFlags, err = agentFlags(ctx, agent); err != nil {
		return err
	}
	switch {
	case c.opts.NoAuth:
		c.AuthNote = "upstream auth off (NoAuth)"
	case !c.agentFlags["docker-config"]:
		c.AuthNote = "upstream auth off: " + agent + " has no --docker-config flag yet, so agents could not authenticate"
	default:
		c.Auth, c.User, c.Password = true, "puller", "pull-"+randomHex(6)
	}
	if c.AuthNote != "" {
		c.logf("%s", c.AuthNote)
	}

	keep := ""
	if c.opts.Detach {
		keep = c.dir
	}
	c.Net, err = netns.Create(ctx, netns.Options{Subnet: c.opts.Subnet, KeepWhile: keep})
	if err != nil {
		return err
	}
	c.logf("network %s: bridge %s %s, gateway %s", c.Net.ID(), c.Net.Bridge(), c.Net.Subnet(), c.Net.Gateway())
	if err := c.writeState(); err != nil {
		return err
	}

	// Registries, each in its namespace.
	for _, r := range []struct {
		name string
		dst  **Registry
		auth bool
	}{{"upstream", &c.Upstream, c.Auth}, {"mirror", &c.Mirror, false}} {
		ns, err := c.Net.AddNamespace(ctx, r.name)
		if err != nil {
			return err
		}
		ro := registry.Options{Host: ns.IP().String(), Port: RegistryPort, TLS: true, Netns: ns.Netns(), Detach: c.opts.Detach}
		if r.auth {
			ro.Htpasswd = map[string]string{c.User: c.Password}
		}
		reg, err := registry.Start(ctx, filepath.Join(c.dir, r.name), ro)
		if err != nil {
			return fmt.Errorf("%s registry: %w", r.name, err)
		}
		*r.dst = &Registry{Registry: reg, Name: r.name, NS: ns}
		c.logf("%s registry %s in namespace %s (TLS%s)", r.name, reg.URL(), ns.Netns(), map[bool]string{true: ", htpasswd", false: ""}[r.auth])
	}
	for i := 1; i <= c.opts.Nodes; i++ {
		name := "node-" + strconv.Itoa(i)
		ns, err := c.Net.AddNamespace(ctx, name)
		if err != nil {
			return err
		}
		c.Nodes = append(c.Nodes, &Node{Name: name, NS: ns, c: c})
	}
	if err := c.writeState(); err != nil {
		return err
	}

	if err := c.pushImages(ctx); err != nil {
		return err
	}
	if err := c.startAggregator(ctx); err != nil {
		return err
	}

	// Nodes in parallel: containerd, pulls, pods, agent.
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.start(ctx); err != nil {
				errs[i] = fmt.Errorf("%s: %w", n.Name, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := c.writeState(); err != nil {
		return err
	}
	if err := c.startMonitoring(ctx); err != nil {
		return err
	}
	if err := c.writeState(); err != nil {
		return err
	}
	c.logf("up in %s", time.Since(t0).Round(100*time.Millisecond))
	return nil
}

func (c *Cluster) pushImages(ctx context.Context) error {
	var all, most []string
	for _, n := range c.Nodes {
		all = append(all, n.Name)
	}
	for i, n := range all {
		if i%2 == 0 { // node-1, node-3, …
			most = append(most, n)
		}
	}
	c.Images = []Image{
		{Repo: PauseRepo, Tag: "v1", Nodes: all},
		{Repo: WebRepo, Tag: "v1", Nodes: all, Pods: []string{"default/web"}},
		{Repo: ToolsRepo, Tag: "v1", Nodes: all, Pods: []string{"batch/worker (init)"}},
		{Repo: WorkerRepo, Tag: "v1", Nodes: most, Pods: []string{"batch/worker"}},
	}
	for i := range c.Images {
		im := &c.Images[i]
		d, err := c.PushImage(ctx, im.Repo, im.Tag)
		if err != nil {
			return err
		}
		im.Ref, im.Digest = c.Upstream.Ref(im.Repo, im.Tag), d
	}
	c.logf("pushed %d images to both registries", len(c.Images))
	return nil
}

// PushImage pushes the sleeper image repo:tag to the upstream and the
// mirror (the same bytes, so the same digest) and returns its digest.
// Pushing again after DeleteImage restores the image as it was.
func (c *Cluster) PushImage(ctx context.Context, repo, tag string) (string, error) {
	var digest string
	for _, r := range []*Registry{c.Upstream, c.Mirror} {
		d, err := registry.PushImage(ctx, r.Registry, repo, tag, registry.ImageOptions{Sleeper: true})
		if err != nil {
			return "", fmt.Errorf("push %s:%s to the %s: %w", repo, tag, r.Name, err)
		}
		if digest != "" && d != digest {
			return "", fmt.Errorf("push %s:%s: digest %s on the upstream, %s on the mirror", repo, tag, digest, d)
		}
		digest = d
	}
	return digest, nil
}

// Image returns the cluster's image of repo.
func (c *Cluster) Image(repo string) Image {
	for _, im := range c.Images {
		if im.Repo == repo {
			return im
		}
	}
	return Image{}
}

// DeleteImage deletes the image's manifest from both registries (the
// nodes keep their copies).
func (c *Cluster) DeleteImage(ctx context.Context, repo string) error {
	im := c.Image(repo)
	if im.Digest == "" {
		return fmt.Errorf("cluster: no image %s", repo)
	}
	for _, r := range []*Registry{c.Upstream, c.Mirror} {
		if err := registry.DeleteManifest(ctx, r.Registry, im.Repo, im.Digest); err != nil {
			return fmt.Errorf("delete %s from the %s: %w", im.Ref, r.Name, err)
		}
	}
	return nil
}

// hostsTOML puts the mirror before the upstream, each with its CA.
func (c *Cluster) hostsTOML() string {
	return fmt.Sprintf("# written by the pullwatch cluster in a box: the mirror first, then the upstream\n"+
		"server = %q\nca = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n",
		c.Upstream.URL(), c.Upstream.CAFile(), c.Mirror.URL(), c.Mirror.CAFile())
}

func (n *Node) dir() string { return filepath.Join(n.c.dir, n.Name) }

func (n *Node) start(ctx context.Context) error {
	c := n.c
	var err error
	pause := c.Image(PauseRepo).Ref
	n.Containerd, err = containerd.Start(ctx, filepath.Join(n.dir(), "containerd"), containerd.Options{
		SandboxImage: pause,
		Hosts:        map[string]string{c.Upstream.Addr(): c.hostsTOML()},
		Netns:        n.NS.Netns(),
		Detach:       c.opts.Detach,
	})
	if err != nil {
		return err
	}
	var auth *runtimeapi.AuthConfig
	if c.Auth {
		auth = &runtimeapi.AuthConfig{Username: c.User, Password: c.Password}
	}
	for _, im := range c.Images {
		if !contains(im.Nodes, n.Name) {
			continue
		}
		if _, err := n.Containerd.PullImage(ctx, im.Ref, auth); err != nil {
			return err
		}
	}
	pods := []containerd.PodSpec{{
		Namespace: "default", Name: "web",
		Containers: []containerd.ContainerSpec{{Name: "web", Image: c.Image(WebRepo).Ref}},
	}}
	if contains(c.Image(WorkerRepo).Nodes, n.Name) {
		pods = append(pods, containerd.PodSpec{
			Namespace: "batch", Name: "worker",
			Containers: []containerd.ContainerSpec{
				{Name: "setup", Image: c.Image(ToolsRepo).Ref, Init: true, Command: []string{"/sleep", "0"}},
				{Name: "worker", Image: c.Image(WorkerRepo).Ref},
			},
		})
	}
	for _, p := range pods {
		p.UID = n.Name + "-" + p.Namespace + "-" + p.Name
		if _, err := n.Containerd.RunPod(ctx, p); err != nil {
			return err
		}
	}
	if c.Auth {
		n.DockerConfig = filepath.Join(n.dir(), "docker", "config.json")
		if err := writeDockerConfig(n.DockerConfig, c.Upstream.Addr(), c.User, c.Password); err != nil {
			return err
		}
	}
	n.agentLog = filepath.Join(n.dir(), "agent.log")
	n.agentArgs = n.agentCommonArgs()
	// The box has no ServiceAccount tokens and no TLS material: the
	// aggregator runs with --insecure and --auth=none, said explicitly.
	n.agentArgs = append([]string{"run", "--aggregator", c.Aggregator.GRPC, "--insecure",
		"--interval", c.opts.Interval.String(), "--log-level", "debug"}, n.agentArgs...)
	if err := n.startAgent(); err != nil {
		return err
	}
	c.logf("%s (%s): containerd %s, %d pods, agent pid %d", n.Name, n.NS.IP(), n.Containerd.Endpoint(), len(pods), n.agent.Pid())
	return nil
}

// agentCommonArgs are the flags run and check share: the node's CRI, its
// containerd config (for hosts.toml), its name, its credentials.
func (n *Node) agentCommonArgs() []string {
	args := []string{
		"--cri-endpoint", n.Containerd.Endpoint(),
		"--containerd-config", n.Containerd.ConfigPath(),
		"--node-name", n.Name,
		"--proxy-from", "none",
		"--probe-timeout", "3s",
	}
	if n.DockerConfig != "" {
		args = append(args, "--docker-config", n.DockerConfig)
	}
	return args
}

func writeDockerConfig(path, host, user, pass string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	cfg := map[string]any{"auths": map[string]any{
		host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))},
	}}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// StartAgent starts the node's agent in its namespace (again, after
// KillAgent).
func (n *Node) StartAgent(ctx context.Context) error {
	if err := n.startAgent(); err != nil {
		return err
	}
	return n.c.writeState()
}

func (n *Node) startAgent() error {
	if n.AgentRunning() {
		return fmt.Errorf("%s: agent already running (pid %d)", n.Name, n.agent.Pid())
	}
	spec, err := n.NS.Spec(proc.Spec{
		Name:    "pullwatch-agent " + n.Name,
		Path:    filepath.Join(n.c.opts.Bin, checkout.AgentBinary),
		Args:    n.agentArgs,
		Env:     isolatedEnv,
		LogFile: n.agentLog,
		Detach:  n.c.opts.Detach,
	})
	if err != nil {
		return err
	}
	p, err := proc.Start(spec)
	if err != nil {
		return err
	}
	n.agent = p
	// Give it a moment to fail on bad flags.
	time.Sleep(100 * time.Millisecond)
	if p.Exited() {
		return fmt.Errorf("%s: agent exited at once: %v\n%s", n.Name, p.ExitErr(), p.LogTail(20))
	}
	return nil
}

// KillAgent kills the node's agent with SIGKILL, as a crash or OOM would.
func (n *Node) KillAgent() error {
	if n.agent == nil {
		return nil
	}
	if err := n.agent.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	if !n.agent.Wait(10 * time.Second) {
		return fmt.Errorf("%s: agent pid %d survived SIGKILL", n.Name, n.agent.Pid())
	}
	return nil
}

// AgentRunning reports whether the node's agent is alive.
func (n *Node) AgentRunning() bool { return n.agent != nil && !n.agent.Exited() }

// AgentPid is the agent's process id (0 when not running).
func (n *Node) AgentPid() int {
	if !n.AgentRunning() {
		return 0
	}
	return n.agent.Pid()
}

// AgentLog is the agent's log file.
func (n *Node) AgentLog() string { return n.agentLog }

// Check runs one `pullwatch-agent check -o json` round in the node's
// namespace with the agent's flags, and returns its JSON.
func (n *Node) Check(ctx context.Context) (agentcheck.Report, string, error) {
	args := append([]string{"check", "-o", "json", "--log-level", "warn"}, n.agentCommonArgs()...)
	r, err := agentcheck.Run(n.NS.Command(ctx, filepath.Join(n.c.opts.Bin, checkout.AgentBinary), args...))
	if err != nil {
		return r.Report, r.Stdout, fmt.Errorf("%s: %w\nstderr:\n%s", n.Name, err, r.Stderr)
	}
	if err := r.Decode(); err != nil {
		return r.Report, r.Stdout, fmt.Errorf("%s: %w (exit %d)\nstderr:\n%s", n.Name, err, r.Code, r.Stderr)
	}
	return r.Report, r.Stdout, nil // a non-zero exit only says some image is not available
}

func (c *Cluster) startAggregator(ctx context.Context) error {
	gport, err := freePortOn(c.Net.Gateway())
	if err != nil {
		return err
	}
	hport := c.opts.HTTPPort
	if hport == 0 {
		if hport, err = proc.FreePort(); err != nil {
			return err
		}
	}
	a := &Aggregator{
		GRPC:   net.JoinHostPort(c.Net.Gateway().String(), strconv.Itoa(gport)),
		HTTP:   "127.0.0.1:" + strconv.Itoa(hport),
		bin:    filepath.Join(c.opts.Bin, checkout.AggregatorBinary),
		log:    filepath.Join(c.dir, "aggregator.log"),
		detach: c.opts.Detach,
	}
	// Per-node series for every image and endpoint, and the compatibility families
	// per pod (there is no Kubernetes API): a 3-node box affords them, and
	// the demo and scenarios show available images per node.
	a.args = []string{"--grpc-listen", a.GRPC, "--http-listen", a.HTTP, "--stale-after", c.opts.StaleAfter.String(), "--log-level", "info",
		"--auth=none", "--http-auth=none", "--insecure", "--node-image-series", "all", "--node-endpoint-series", "all", "--compat-metrics=current"}
	c.Aggregator = a
	if err := a.Start(ctx); err != nil {
		return err
	}
	c.logf("aggregator pid %d: gRPC %s, HTTP %s", a.proc.Pid(), a.GRPC, a.HTTP)
	return nil
}

// Start starts the aggregator (again, after Stop) with the same flags and
// waits for /readyz.
func (a *Aggregator) Start(ctx context.Context) error {
	p, err := proc.Start(proc.Spec{Name: "pullwatch-aggregator", Path: a.bin, Args: a.args, Env: isolatedEnv, LogFile: a.log, Detach: a.detach})
	if err != nil {
		return err
	}
	a.proc = p
	err = proc.Poll(ctx, 20*time.Second, 50*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("exited: %v: %w", p.ExitErr(), proc.ErrStop)
		}
		_, err := httpGet(ctx, "http://"+a.HTTP+"/readyz")
		return err
	})
	if err != nil {
		_ = p.Stop(5 * time.Second)
		return fmt.Errorf("aggregator not ready: %w\n--- %s (tail) ---\n%s", err, a.log, proc.LogTail(a.log, 30))
	}
	return nil
}

// Stop stops the aggregator (SIGTERM, then SIGKILL after 10s).
func (a *Aggregator) Stop() error {
	if a.proc == nil {
		return nil
	}
	if err := a.proc.Stop(10 * time.Second); err != nil {
		return err
	}
	return proc.WaitPortClosed(a.HTTP, 10*time.Second)
}

// Metrics scrapes the aggregator's /metrics.
func (a *Aggregator) Metrics(ctx context.Context) (Metrics, error) {
	body, err := httpGet(ctx, "http://"+a.HTTP+"/metrics")
	if err != nil {
		return nil, err
	}
	return ParseMetrics(body)
}

func (c *Cluster) startMonitoring(ctx context.Context) error {
	var err error
	c.Alertmanager, err = alertmanager.Start(ctx, filepath.Join(c.dir, "alertmanager"), alertmanager.Options{WebhookURL: c.opts.WebhookURL, Detach: c.opts.Detach})
	if err != nil {
		return err
	}
	rules, shipped, err := RewriteFor(c.opts.RuleFiles, filepath.Join(c.dir, "rules"), c.opts.AlertFor)
	if err != nil {
		return err
	}
	c.ShippedFor = shipped
	c.Prometheus, err = prometheus.Start(ctx, filepath.Join(c.dir, "prometheus"), []string{c.Aggregator.HTTP}, prometheus.Options{
		RuleFiles: rules,
		ExtraArgs: []string{"--rules.alert.resend-delay=2s", "--web.enable-admin-api"},
	})
	if err != nil {
		return err
	}
	c.PrometheusAddr = c.Prometheus.Addr()
	// The harness writes no alerting section: add one and reload.
	f, err := os.OpenFile(c.Prometheus.ConfigPath(), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [%q]\n", c.Alertmanager.Addr())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := c.Prometheus.Reload(ctx); err != nil {
		return fmt.Errorf("prometheus reload with the alertmanager: %w", err)
	}
	// Scraped once, so that rules see the aggregator from now on.
	if _, err := c.Prometheus.WaitForQuery(ctx, `up{job="pullwatch"} == 1`, nil, 30*time.Second); err != nil {
		return fmt.Errorf("prometheus never scraped the aggregator: %w", err)
	}
	if pid := c.Prometheus.Pid(); pid > 0 {
		_ = proc.WritePidFile(filepath.Join(c.Prometheus.Dir(), "prometheus.pid"), pid)
	}
	what := "shipped for: durations"
	if c.opts.AlertFor != "" {
		what = "every for: set to " + c.opts.AlertFor
	}
	c.logf("prometheus %s with %d rule file(s) (%s), alertmanager %s", c.Prometheus.URL(), len(rules), what, c.Alertmanager.URL())
	return nil
}

// Node returns the node of that name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Dir is the cluster's directory.
func (c *Cluster) Dir() string { return c.dir }

// Bin is the directory with the binaries the cluster runs.
func (c *Cluster) Bin() string { return c.opts.Bin }

// Interval is the agents' --interval; StaleAfter the aggregator's.
func (c *Cluster) Interval() time.Duration   { return c.opts.Interval }
func (c *Cluster) StaleAfter() time.Duration { return c.opts.StaleAfter }

// Heal undoes every fault: removes every iptables rule from every node,
// starts stopped registries, pushes deleted images again, starts killed
// agents and a stopped aggregator.
func (c *Cluster) Heal(ctx context.Context) error {
	var errs []error
	for _, n := range c.Nodes {
		if err := n.NS.Unblock(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range []*Registry{c.Upstream, c.Mirror} {
		if !r.Running() {
			if err := r.Restart(ctx); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.Name, err))
			}
		}
	}
	for _, im := range c.Images {
		for _, r := range []*Registry{c.Upstream, c.Mirror} {
			if !r.Running() {
				continue
			}
			code, _, err := registry.ManifestStatus(ctx, r.Registry, im.Repo, im.Tag)
			if err == nil && code == 404 {
				if _, err := registry.PushImage(ctx, r.Registry, im.Repo, im.Tag, registry.ImageOptions{Sleeper: true}); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if c.Aggregator.Pid() == 0 {
		if err := c.Aggregator.Start(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range c.Nodes {
		if !n.AgentRunning() {
			if err := n.StartAgent(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Stop tears the whole cluster down: agents, aggregator, Prometheus,
// Alertmanager, every node's pods and containerd, the registries, then
// the network. Logs stay in Dir. It carries on past errors.
func (c *Cluster) Stop() error {
	var errs []error
	add := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	for _, n := range c.Nodes {
		if n.agent != nil {
			add(n.Name+" agent", n.agent.Stop(5*time.Second))
		}
	}
	if c.Aggregator != nil {
		add("aggregator", c.Aggregator.Stop())
	}
	if c.Prometheus != nil {
		add("prometheus", c.Prometheus.Stop())
	} else if c.promProc != nil {
		add("prometheus", c.promProc.Stop(10*time.Second))
	}
	if c.Alertmanager != nil {
		add("alertmanager", c.Alertmanager.Stop())
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, n := range c.Nodes {
		if n.Containerd == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := n.Containerd.Stop()
			mu.Lock()
			add(n.Name+" containerd", err)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, r := range []*Registry{c.Upstream, c.Mirror} {
		if r != nil && r.Registry != nil {
			add(r.Name+" registry", r.Stop())
		}
	}
	if c.Net != nil {
		add("network", c.Net.Delete(context.Background()))
	}
	_ = os.Remove(filepath.Join(c.dir, stateFile))
	return errors.Join(errs...)
}

// LogFiles lists every part's log, by part.
func (c *Cluster) LogFiles() map[string]string {
	logs := map[string]string{}
	if c.Aggregator != nil {
		logs["aggregator"] = c.Aggregator.log
	}
	for _, n := range c.Nodes {
		if n.agentLog != "" {
			logs[n.Name+"/agent"] = n.agentLog
		}
		if n.Containerd != nil {
			logs[n.Name+"/containerd"] = n.Containerd.LogFile()
		}
	}
	for _, r := range []*Registry{c.Upstream, c.Mirror} {
		if r != nil && r.Registry != nil {
			logs[r.Name+"/registry"] = r.LogFile()
		}
	}
	if c.Prometheus != nil {
		logs["prometheus"] = c.Prometheus.LogFile()
	}
	if c.Alertmanager != nil {
		logs["alertmanager"] = c.Alertmanager.LogFile()
	}
	return logs
}

// LogTails returns the last n lines of the agents' and the aggregator's
// logs.
func (c *Cluster) LogTails(n int) string {
	var b strings.Builder
	for _, node := range c.Nodes {
		fmt.Fprintf(&b, "--- %s agent (%s):\n%s\n", node.Name, node.agentLog, proc.LogTail(node.agentLog, n))
	}
	if c.Aggregator != nil {
		fmt.Fprintf(&b, "--- aggregator (%s):\n%s\n", c.Aggregator.log, proc.LogTail(c.Aggregator.log, n))
	}
	return b.String()
}

// isolatedEnv keeps the binaries away from whatever Kubernetes API or
// proxy this machine's environment names: the cluster in a box has neither.
var isolatedEnv = []string{"KUBECONFIG=", "KUBERNETES_SERVICE_HOST=", "HTTP_PROXY=", "HTTPS_PROXY=", "NO_PROXY=", "http_proxy=", "https_proxy=", "no_proxy="}

func freePortOn(ip net.IP) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("free port on %s: %w", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
