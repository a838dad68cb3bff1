package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/alertmanager"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// stateFile in Dir records what Attach needs.
const stateFile = "cluster.json"

type savedState struct {
	Bin        string            `json:"bin"`
	NetworkID  string            `json:"networkId"`
	Interval   string            `json:"interval"`
	StaleAfter string            `json:"staleAfter"`
	Detach     bool              `json:"detach"`
	Auth       bool              `json:"auth"`
	User       string            `json:"user,omitempty"`
	Password   string            `json:"password,omitempty"`
	AuthNote   string            `json:"authNote,omitempty"`
	Nodes      []savedNode       `json:"nodes"`
	Aggregator *savedAggregator  `json:"aggregator,omitempty"`
	Prometheus *savedPrometheus  `json:"prometheus,omitempty"`
	AlertFor   string            `json:"alertFor,omitempty"`
	ShippedFor map[string]string `json:"shippedFor,omitempty"`
	Images     []Image           `json:"images"`
}

type savedNode struct {
	Name         string   `json:"name"`
	AgentPid     int      `json:"agentPid,omitempty"`
	AgentArgs    []string `json:"agentArgs,omitempty"`
	AgentLog     string   `json:"agentLog,omitempty"`
	DockerConfig string   `json:"dockerConfig,omitempty"`
}

type savedAggregator struct {
	GRPC string   `json:"grpc"`
	HTTP string   `json:"http"`
	Args []string `json:"args"`
	Bin  string   `json:"bin"`
	Log  string   `json:"log"`
	Pid  int      `json:"pid"`
}

type savedPrometheus struct {
	Addr string `json:"addr"`
	Dir  string `json:"dir"`
	Pid  int    `json:"pid"`
}

func (c *Cluster) writeState() error {
	st := savedState{
		Bin:        c.opts.Bin,
		Interval:   c.opts.Interval.String(),
		StaleAfter: c.opts.StaleAfter.String(),
		Detach:     c.opts.Detach,
		Auth:       c.Auth,
		User:       c.User,
		Password:   c.Password,
		AuthNote:   c.AuthNote,
		AlertFor:   c.AlertFor,
		ShippedFor: c.ShippedFor,
		Images:     c.Images,
	}
	if c.Net != nil {
		st.NetworkID = c.Net.ID()
	}
	for _, n := range c.Nodes {
		st.Nodes = append(st.Nodes, savedNode{Name: n.Name, AgentPid: n.AgentPid(), AgentArgs: n.agentArgs, AgentLog: n.agentLog, DockerConfig: n.DockerConfig})
	}
	if a := c.Aggregator; a != nil {
		st.Aggregator = &savedAggregator{GRPC: a.GRPC, HTTP: a.HTTP, Args: a.args, Bin: a.bin, Log: a.log, Pid: a.Pid()}
	}
	if c.Prometheus != nil {
		st.Prometheus = &savedPrometheus{Addr: c.Prometheus.Addr(), Dir: c.Prometheus.Dir(), Pid: c.Prometheus.Pid()}
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(c.dir, stateFile))
}

// ErrNotUp is returned by Attach when dir holds no cluster.
var ErrNotUp = errors.New("no cluster")

// Attach finds a cluster started (with Options.Detach) in dir by an
// earlier process. Parts that are gone are left nil or not running, so
// that Stop still cleans up what is left.
func Attach(dir string, log io.Writer) (*Cluster, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNotUp)
	}
	if err != nil {
		return nil, err
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("cluster state %s: %w", filepath.Join(dir, stateFile), err)
	}
	if log == nil {
		log = io.Discard
	}
	interval, _ := time.ParseDuration(st.Interval)
	stale, _ := time.ParseDuration(st.StaleAfter)
	c := &Cluster{
		opts:       Options{Dir: dir, Bin: st.Bin, Interval: interval, StaleAfter: stale, Detach: st.Detach, Log: log},
		dir:        dir,
		log:        log,
		Images:     st.Images,
		Auth:       st.Auth,
		User:       st.User,
		Password:   st.Password,
		AuthNote:   st.AuthNote,
		AlertFor:   st.AlertFor,
		ShippedFor: st.ShippedFor,
	}
	var errs []error
	if st.NetworkID != "" {
		if c.Net, err = netns.Attach(st.NetworkID); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range []struct {
		name string
		dst  **Registry
	}{{"upstream", &c.Upstream}, {"mirror", &c.Mirror}} {
		rdir := filepath.Join(dir, r.name)
		if !checkout.FileExists(filepath.Join(rdir, "registry.json")) {
			continue
		}
		reg, err := registry.Attach(rdir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		*r.dst = &Registry{Registry: reg, Name: r.name}
		if c.Net != nil {
			(*r.dst).NS = c.Net.Namespace(r.name)
		}
	}
	for _, sn := range st.Nodes {
		n := &Node{Name: sn.Name, c: c, agentArgs: sn.AgentArgs, agentLog: sn.AgentLog, DockerConfig: sn.DockerConfig}
		if c.Net != nil {
			n.NS = c.Net.Namespace(sn.Name)
		}
		cdir := filepath.Join(dir, sn.Name, "containerd")
		if checkout.FileExists(filepath.Join(cdir, "containerd.json")) {
			if n.Containerd, err = containerd.Attach(cdir); err != nil {
				errs = append(errs, err)
			}
		}
		if sn.AgentPid > 0 {
			if p, err := proc.Attach("pullwatch-agent "+sn.Name, sn.AgentPid, "--node-name "+sn.Name, sn.AgentLog); err == nil {
				n.agent = p
			}
		}
		c.Nodes = append(c.Nodes, n)
	}
	if sa := st.Aggregator; sa != nil {
		c.Aggregator = &Aggregator{GRPC: sa.GRPC, HTTP: sa.HTTP, args: sa.Args, bin: sa.Bin, log: sa.Log, detach: st.Detach}
		if sa.Pid > 0 {
			if p, err := proc.Attach("pullwatch-aggregator", sa.Pid, sa.GRPC, sa.Log); err == nil {
				c.Aggregator.proc = p
			}
		}
	}
	if sp := st.Prometheus; sp != nil {
		c.PrometheusAddr = sp.Addr
		if p, err := proc.Attach("prometheus", sp.Pid, filepath.Join(sp.Dir, "prometheus.yml"), filepath.Join(sp.Dir, "prometheus.log")); err == nil {
			c.promProc = p
		}
	}
	if amDir := filepath.Join(dir, "alertmanager"); checkout.FileExists(filepath.Join(amDir, "alertmanager.json")) {
		if c.Alertmanager, err = alertmanager.Attach(amDir); err != nil {
			errs = append(errs, err)
		}
	}
	return c, errors.Join(errs...)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
