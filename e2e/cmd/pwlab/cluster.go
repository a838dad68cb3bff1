package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pullwatch/pullwatch/e2e/cluster"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
)

const clusterUsage = `pwlab cluster — pullwatch's cluster in a box, for make demo

Usage:
  pwlab cluster up      --dir DIR [flags]   bring it up, break node-2's egress, print the summary
  pwlab cluster status  --dir DIR           print what the aggregator and Prometheus say now
  pwlab cluster break   --dir DIR [--node N] [--from upstream,mirror]
  pwlab cluster heal    --dir DIR           undo every fault
  pwlab cluster down    --dir DIR           stop everything, delete the network and DIR's state

up builds, all on this machine: a bridge with its own 10.203.N.0/24 and network
namespaces on it; an upstream registry (TLS, htpasswd when the agent takes
--docker-config) and a mirror registry (TLS) in namespaces of their own; 3 nodes,
each a namespace with its own containerd (hosts.toml: the mirror first), real
host-network pods and a pullwatch-agent; pullwatch-aggregator in the root
namespace (gRPC on the bridge's address, HTTP on 127.0.0.1); Prometheus with
deploy/rules and Alertmanager. No traffic leaves the machine. Everything keeps
running after pwlab exits, until pwlab cluster down.

Needs root, containerd, runc, docker-registry, prometheus,
prometheus-alertmanager, iproute2, iptables (scripts/install-deps.sh) and the
pullwatch binaries (make build, or --bin).
`

func runCluster(args []string) error {
	if len(args) < 1 {
		fmt.Fprint(os.Stderr, clusterUsage)
		return errors.New("pwlab cluster: missing command")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "up":
		return clusterUp(args)
	case "down":
		return clusterDown(args)
	case "status":
		return clusterStatus(args)
	case "break":
		return clusterBreak(args)
	case "heal":
		return clusterHeal(args)
	case "help", "-h", "-help", "--help":
		fmt.Print(clusterUsage)
		return nil
	}
	fmt.Fprint(os.Stderr, clusterUsage)
	return fmt.Errorf("pwlab cluster: unknown command %q", cmd)
}

func clusterFlags(name, summary string) (*flag.FlagSet, *string) {
	fs, dir := newFlags("cluster "+name, summary)
	return fs, dir
}

func signalContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	return ctx, func() { cancel(); stop() }
}

func clusterUp(args []string) error {
	fs, dirFlag := clusterFlags("up", "Bring the cluster in a box up, break a node's egress, print what pullwatch says.")
	bin := fs.String("bin", "", "directory with pullwatch-agent and pullwatch-aggregator (default: $PULLWATCH_BIN, else <repo>/bin, else go build)")
	nodes := fs.Int("nodes", 3, "number of nodes")
	interval := fs.Duration("interval", 5*time.Second, "the agents' --interval")
	staleAfter := fs.Duration("stale-after", 30*time.Second, "the aggregator's --stale-after")
	httpPort := fs.Int("http-port", 18080, "the aggregator's HTTP port on 127.0.0.1 (status page, /metrics; 0: a free one)")
	alertFor := fs.String("alert-for", "", "replace every for: of the shipped rules with this duration (e.g. 15s) so alerts fire during the demo; empty keeps the shipped durations")
	breakNode := fs.String("break-node", "node-2", "node whose egress to both registries is cut once the cluster is healthy (empty: none)")
	rules := fs.String("rules", "", "directory with the Prometheus rule files *.rules.yaml (default: <repo>/deploy/rules)")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up if the cluster is not up within this time")
	dir, err := parse(fs, dirFlag, args)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root (network namespaces, containerd and runc need it)")
	}
	if c, err := cluster.Attach(dir, nil); err == nil {
		if c.Aggregator != nil && c.Aggregator.Pid() != 0 {
			fmt.Printf("pwlab: a cluster is already up in %s\n", dir)
			return printClusterStatus(c)
		}
		fmt.Printf("pwlab: found a partial cluster in %s; cleaning it up first\n", dir)
		if err := c.Stop(); err != nil {
			return fmt.Errorf("cleaning up the partial cluster: %w", err)
		}
	}
	ctx, cancel := signalContext(*timeout)
	defer cancel()
	if removed, err := cluster.CleanupStale(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "pwlab: removing leftovers of earlier runs:", err)
	} else if len(removed) > 0 {
		fmt.Printf("pwlab: removed leftovers of earlier runs: %s\n", strings.Join(removed, "; "))
	}
	if *bin == "" {
		if root, err := checkout.Root(); err == nil && os.Getenv(checkout.BinEnv) == "" {
			if d := filepath.Join(root, "bin"); checkout.HasBinaries(d) {
				*bin = d
			}
		}
	}
	binDir, err := checkout.Binaries(ctx, *bin, filepath.Join(dir, "bin"))
	if err != nil {
		return err
	}
	var ruleFiles []string
	if ruleFiles, err = cluster.RuleFiles(*rules); err != nil {
		return err
	}
	if len(ruleFiles) == 0 {
		fmt.Println("pwlab: no rule files found (deploy/rules/*.rules.yaml): Prometheus runs without alert rules")
	}
	c, err := cluster.Start(ctx, cluster.Options{
		Dir: dir, Bin: binDir, Nodes: *nodes, Interval: *interval, StaleAfter: *staleAfter,
		HTTPPort: *httpPort, AlertFor: *alertFor, RuleFiles: ruleFiles, Detach: true, Log: os.Stdout,
	})
	if err != nil {
		return err
	}
	fmt.Printf("pwlab: waiting for every agent to report every image available\n")
	if _, err := c.WaitMetrics(ctx, 6**interval+30*time.Second, c.Healthy); err != nil {
		fmt.Println(c.LogTails(15))
		return fmt.Errorf("the cluster did not become healthy (it keeps running; pwlab cluster down --dir %s): %w", dir, err)
	}
	if *breakNode != "" {
		n := c.Node(*breakNode)
		if n == nil {
			return fmt.Errorf("--break-node %s: %w", *breakNode, cluster.ErrNoNode)
		}
		if _, err := n.Cut(ctx, c.Upstream, c.Mirror); err != nil {
			return err
		}
		fmt.Printf("pwlab: cut %s's egress to the upstream (%s) and the mirror (%s): iptables REJECT in namespace %s\n",
			n.Name, c.Upstream.Addr(), c.Mirror.Addr(), n.NS.Netns())
		fmt.Printf("pwlab: waiting for %s's agent to report it\n", n.Name)
		if _, err := c.WaitMetrics(ctx, 3**interval+30*time.Second, func(m cluster.Metrics) error {
			return c.NodeImages(m, n.Name, "unreachable")
		}); err != nil {
			fmt.Println(c.LogTails(15))
			return fmt.Errorf("the aggregator did not see %s's outage: %w", n.Name, err)
		}
		if len(ruleFiles) > 0 {
			// Let Prometheus scrape and evaluate, so its alerts show as pending.
			deadline := time.Now().Add(15 * time.Second)
			for time.Now().Before(deadline) {
				if alerts, err := c.PromAlerts(ctx); err == nil && len(alerts) > 0 {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
		}
	}
	return printClusterStatus(c)
}

func printClusterStatus(c *cluster.Cluster) error {
	ctx, cancel := signalContext(30 * time.Second)
	defer cancel()
	s, err := c.Summary(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("\n%s\n", s)
	if c.AuthNote != "" {
		fmt.Printf("note: %s\n", c.AuthNote)
	}
	fmt.Printf("status page:  %s\n", c.Aggregator.URL())
	fmt.Printf("metrics:      %smetrics\n", c.Aggregator.URL())
	if c.PrometheusAddr != "" {
		fmt.Printf("prometheus:   http://%s/alerts\n", c.PrometheusAddr)
	}
	if c.Alertmanager != nil {
		fmt.Printf("alertmanager: %s\n", c.Alertmanager.URL())
	}
	fmt.Printf("logs:         %s/{aggregator.log,node-*/agent.log,node-*/containerd/containerd.log,upstream,mirror}\n", c.Dir())
	if n := c.Nodes[0]; n.NS != nil {
		fmt.Printf("inside node:  nsenter --net=%s -- %s check --node-name %s --cri-endpoint %s --containerd-config %s --proxy-from none\n",
			n.NS.Path(), filepath.Join(c.Bin(), checkout.AgentBinary), n.Name, n.Containerd.Endpoint(), n.Containerd.ConfigPath())
	}
	fmt.Printf("stop with:    make demo-down   (pwlab cluster down --dir %s)\n", c.Dir())
	return nil
}

// parseAndAttach parses a cluster command's flags and attaches to the
// cluster in its --dir.
func parseAndAttach(fs *flag.FlagSet, dirFlag *string, args []string) (string, *cluster.Cluster, error) {
	dir, err := parse(fs, dirFlag, args)
	if err != nil {
		return "", nil, err
	}
	c, err := attachCluster(dir)
	return dir, c, err
}

func attachCluster(dir string) (*cluster.Cluster, error) {
	c, err := cluster.Attach(dir, os.Stdout)
	if errors.Is(err, cluster.ErrNotUp) {
		return nil, fmt.Errorf("no cluster in %s (pwlab cluster up --dir %s)", dir, dir)
	}
	if c == nil {
		return nil, err
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pwlab: parts of the cluster are gone: %v\n", err)
	}
	return c, nil
}

func clusterStatus(args []string) error {
	fs, dirFlag := clusterFlags("status", "Print what the aggregator and Prometheus say about the cluster now.")
	dir, c, err := parseAndAttach(fs, dirFlag, args)
	if err != nil {
		return err
	}
	if c.Aggregator == nil || c.Aggregator.Pid() == 0 {
		return fmt.Errorf("the aggregator of the cluster in %s is not running (pwlab cluster down, then up)", dir)
	}
	for _, n := range c.Nodes {
		state := "running"
		if !n.AgentRunning() {
			state = "NOT RUNNING"
		}
		rules := ""
		if n.NS != nil {
			if r, err := n.NS.Rules(context.Background()); err == nil && len(r) > 0 {
				rules = ", egress cut: " + strings.Join(r, "; ")
			}
		}
		fmt.Printf("pwlab: %s agent %s%s\n", n.Name, state, rules)
	}
	return printClusterStatus(c)
}

func clusterBreak(args []string) error {
	fs, dirFlag := clusterFlags("break", "Cut a node's egress to registries (iptables REJECT in its namespace).")
	node := fs.String("node", "node-2", "the node")
	from := fs.String("from", "upstream,mirror", "registries to cut it from: upstream, mirror or both (comma-separated)")
	dir, c, err := parseAndAttach(fs, dirFlag, args)
	if err != nil {
		return err
	}
	n := c.Node(*node)
	if n == nil || n.NS == nil {
		return fmt.Errorf("--node %s: %w", *node, cluster.ErrNoNode)
	}
	var regs []*cluster.Registry
	for _, f := range strings.Split(*from, ",") {
		switch strings.TrimSpace(f) {
		case "upstream":
			regs = append(regs, c.Upstream)
		case "mirror":
			regs = append(regs, c.Mirror)
		default:
			return fmt.Errorf("--from %q: want upstream, mirror or both", *from)
		}
	}
	if _, err := n.Cut(context.Background(), regs...); err != nil {
		return err
	}
	fmt.Printf("pwlab: cut %s from %s; the agent reports it within %s (pwlab cluster status --dir %s)\n", n.Name, *from, c.Interval(), dir)
	return nil
}

func clusterHeal(args []string) error {
	fs, dirFlag := clusterFlags("heal", "Undo every fault: iptables rules, stopped registries, killed agents.")
	_, c, err := parseAndAttach(fs, dirFlag, args)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext(2 * time.Minute)
	defer cancel()
	if err := c.Heal(ctx); err != nil {
		return err
	}
	fmt.Printf("pwlab: healed; the agents report it within %s\n", c.Interval())
	return nil
}

func clusterDown(args []string) error {
	fs, dirFlag := clusterFlags("down", "Stop the cluster in DIR, delete its network and state.")
	dir, err := parse(fs, dirFlag, args)
	if err != nil {
		return err
	}
	c, err := cluster.Attach(dir, os.Stdout)
	if errors.Is(err, cluster.ErrNotUp) {
		fmt.Printf("pwlab: no cluster in %s\n", dir)
		return nil
	}
	if c == nil {
		return err
	}
	if err := c.Stop(); err != nil {
		return fmt.Errorf("stopping the cluster in %s (run down again to retry): %w", dir, err)
	}
	// Only what cluster.Start creates; DIR itself goes if that leaves it empty.
	var errs []error
	for _, name := range clusterEntries(dir) {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	_ = os.Remove(dir)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Printf("pwlab: cluster down; removed its state in %s\n", dir)
	return nil
}

// clusterEntries lists what cluster.Start (and up's build) put in dir.
func clusterEntries(dir string) []string {
	names := []string{"bin", "upstream", "mirror", "prometheus", "alertmanager", "rules", "aggregator.log", "cluster.json", "cluster.json.tmp"}
	nodes, _ := filepath.Glob(filepath.Join(dir, "node-*"))
	for _, n := range nodes {
		names = append(names, filepath.Base(n))
	}
	return names
}
