package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// WaitMetrics scrapes the aggregator every 250ms until cond accepts its
// metrics, and returns them. On timeout the error wraps cond's last word.
func (c *Cluster) WaitMetrics(ctx context.Context, timeout time.Duration, cond func(Metrics) error) (Metrics, error) {
	var last Metrics
	err := proc.Poll(ctx, timeout, 250*time.Millisecond, func() error {
		m, err := c.Aggregator.Metrics(ctx)
		if err != nil {
			return err
		}
		last = m
		return cond(m)
	})
	return last, err
}

// Healthy accepts metrics in which every node is fresh and has each of
// its images available.
func (c *Cluster) Healthy(m Metrics) error {
	for _, n := range c.Nodes {
		if v, ok := m.Value("pullwatch_node_stale", map[string]string{"node": n.Name}); !ok || v != 0 {
			return fmt.Errorf("%s not fresh (pullwatch_node_stale %v, found %v)", n.Name, v, ok)
		}
		if err := c.NodeImages(m, n.Name, "available"); err != nil {
			return err
		}
	}
	return nil
}

// NodeImages accepts metrics in which every image the node pulled has
// status on it.
func (c *Cluster) NodeImages(m Metrics, node, status string) error {
	for _, im := range c.Images {
		if !contains(im.Nodes, node) {
			continue
		}
		labels := map[string]string{"node": node, "image": im.Ref}
		if v, ok := m.Value("pullwatch_node_image_status", labels); !ok || v != 1 {
			return fmt.Errorf("%s: %s has %d status series, want one (%s)", node, im.Ref, len(m.Select("pullwatch_node_image_status", labels)), m.Select("pullwatch_node_image_status", labels).Lines(""))
		}
		if got := m.Select("pullwatch_node_image_status", labels)[0].Labels["status"]; got != status {
			return fmt.Errorf("%s: %s is %s, want %s", node, im.Ref, got, status)
		}
	}
	return nil
}

// Cut blocks the node's egress to the registries (iptables REJECT in the
// node's namespace) and returns the rules.
func (n *Node) Cut(ctx context.Context, regs ...*Registry) ([]*netns.Rule, error) {
	var rules []*netns.Rule
	for _, r := range regs {
		rule, err := n.NS.Block(ctx, r.IP(), RegistryPort, netns.Reject)
		if err != nil {
			return rules, fmt.Errorf("cut %s from the %s: %w", n.Name, r.Name, err)
		}
		rules = append(rules, rule)
	}
	return rules, nil
}

// Reachable reports whether the node can open a TCP connection to the
// registry now (from its namespace).
func (n *Node) Reachable(ctx context.Context, r *Registry) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := n.NS.DialContext(ctx, "tcp", net.JoinHostPort(r.IP().String(), fmt.Sprint(RegistryPort)))
	if err != nil {
		return fmt.Errorf("%s → %s: %w", n.Name, r.Name, err)
	}
	return conn.Close()
}

// ErrNoNode is returned for a node name the cluster does not have.
var ErrNoNode = errors.New("no such node")
