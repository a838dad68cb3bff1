// Package netns builds a small private network on this machine for
// end-to-end tests: a Linux bridge with an address of its own and network
// namespaces attached to it by veth pairs, each with one address on the
// bridge's /24 and loopback up. It runs processes inside a namespace, cuts
// a namespace's egress to one address and port with iptables, and tears
// everything down again, also what a killed run left behind.
//
// Nothing in such a network can reach beyond it: the namespaces have a
// route to the bridge's /24 and no other (no default route), nothing is
// NATed, no forwarding is switched on, and IPv6 is off on every interface
// the package creates. Processes in the root namespace reach the
// namespaces through the bridge's address.
//
// Every name carries a random run id (bridge PREFIX+"br"+id, veths
// PREFIX+id+"v"+N, namespaces PREFIX+"-"+id+"-"+NAME), and every network is
// recorded in a marker file under MarkerDir before anything is created,
// with the process that owns it. CleanupStale removes the networks whose
// owner is gone, and any resource with the prefix that has no marker.
//
// It needs root and iproute2 (ip), nsenter (util-linux) and iptables.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// DefaultPrefix starts the name of everything this package creates.
const DefaultPrefix = "pwc"

// DefaultSubnetBase is the /16 a free /24 is picked from when
// Options.Subnet is empty.
const DefaultSubnetBase = "10.203"

// MarkerDir holds one JSON marker per network (tmpfs: it goes at reboot,
// as the namespaces do).
const MarkerDir = "/run/pullwatch-netns"

// FaultChain is the iptables chain (filter table, jumped to first from
// OUTPUT) in each namespace that holds the rules Block adds.
const FaultChain = "PW-FAULTS"

// Binaries this package runs.
var Binaries = []string{"ip", "nsenter", "iptables"}

// Options configure Create.
type Options struct {
	// Prefix starts every name (1 to 5 characters, a-z and 0-9; default
	// DefaultPrefix). CleanupStale looks for leftovers by prefix.
	Prefix string
	// Subnet is the bridge's /24 in CIDR form ("10.203.7.0/24"). Empty:
	// the first 10.203.N.0/24 (N from 1 to 254; see SubnetBase) that no
	// interface, route or other network of this package on this machine
	// uses.
	Subnet string
	// SubnetBase is the /16 ("10.203") a free /24 is picked from when
	// Subnet is empty (default DefaultSubnetBase).
	SubnetBase string
	// KeepWhile makes the network outlive the process that creates it
	// (pwlab cluster up): it counts as stale only once this path no longer
	// exists. Empty: the network is stale once the creating process ends.
	KeepWhile string
}

// Network is a bridge with namespaces attached to it.
type Network struct {
	st State
}

// State is what a marker file records about a network; it is also what
// Attach needs to find the network again.
type State struct {
	ID      string `json:"id"`
	Prefix  string `json:"prefix"`
	Bridge  string `json:"bridge"`
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
	// OwnerPid and OwnerStart (its start time in clock ticks since boot)
	// identify the process that created the network.
	OwnerPid   int       `json:"ownerPid"`
	OwnerStart uint64    `json:"ownerStart"`
	KeepWhile  string    `json:"keepWhile,omitempty"`
	Created    time.Time `json:"created"`
	// Namespaces in the order they were added.
	Namespaces []NamespaceState `json:"namespaces"`
}

// NamespaceState records one namespace of a network.
type NamespaceState struct {
	// Name is the caller's name ("node-1"); Netns the namespace's name
	// under /run/netns; IP its address; HostVeth the veth end on the bridge.
	Name     string `json:"name"`
	Netns    string `json:"netns"`
	IP       string `json:"ip"`
	HostVeth string `json:"hostVeth"`
}

// Namespace is one network namespace attached to a Network's bridge.
type Namespace struct {
	st      NamespaceState
	network *Network
}

var prefixRE = regexp.MustCompile(`^[a-z0-9]{1,5}$`)

// Create makes the bridge (with the subnet's .1 as its address) and the
// marker; add namespaces with AddNamespace. On error nothing is left.
func Create(ctx context.Context, opts Options) (*Network, error) {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("netns: prefix %q: want 1 to 5 characters a-z, 0-9", opts.Prefix)
	}
	if opts.SubnetBase == "" {
		opts.SubnetBase = DefaultSubnetBase
	}
	if err := checkBinaries(); err != nil {
		return nil, err
	}
	id, err := newID()
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	start, _ := startTime(self)
	n := &Network{st: State{
		ID:         id,
		Prefix:     opts.Prefix,
		Bridge:     opts.Prefix + "br" + id,
		OwnerPid:   self,
		OwnerStart: start,
		KeepWhile:  opts.KeepWhile,
		Created:    time.Now().UTC(),
	}}

	unlock, err := lockMarkers()
	if err != nil {
		return nil, err
	}
	defer unlock()
	subnet, err := pickSubnet(ctx, opts.Subnet, opts.SubnetBase)
	if err != nil {
		return nil, err
	}
	gw := hostIP(subnet, 1)
	n.st.Subnet, n.st.Gateway = subnet.String(), gw.String()
	// The marker first: whatever exists with this id from now on is
	// found by CleanupStale should this process die halfway.
	if err := n.writeMarker(); err != nil {
		return nil, err
	}
	fail := func(err error) (*Network, error) {
		if derr := n.Delete(context.WithoutCancel(ctx)); derr != nil {
			err = fmt.Errorf("%w (and cleaning up: %v)", err, derr)
		}
		return nil, err
	}
	if _, err := run(ctx, "ip", "link", "add", n.st.Bridge, "type", "bridge"); err != nil {
		return fail(err)
	}
	// No IPv6 on the bridge: no link-local address, no router or
	// neighbour solicitations.
	_ = os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", n.st.Bridge, "disable_ipv6"), []byte("1"), 0o644)
	ones, _ := subnet.Mask.Size()
	if _, err := run(ctx, "ip", "addr", "add", fmt.Sprintf("%s/%d", gw, ones), "dev", n.st.Bridge); err != nil {
		return fail(err)
	}
	if _, err := run(ctx, "ip", "link", "set", n.st.Bridge, "up"); err != nil {
		return fail(err)
	}
	return n, nil
}

// Attach finds the network with run id id through its marker.
func Attach(id string) (*Network, error) {
	st, err := readMarker(filepath.Join(MarkerDir, id+".json"))
	if err != nil {
		return nil, err
	}
	return &Network{st: st}, nil
}

// ID is the network's random run id.
func (n *Network) ID() string { return n.st.ID }

// Bridge is the bridge interface's name.
func (n *Network) Bridge() string { return n.st.Bridge }

// Subnet is the bridge's /24.
func (n *Network) Subnet() *net.IPNet {
	_, s, _ := net.ParseCIDR(n.st.Subnet)
	return s
}

// Gateway is the bridge's own address (the subnet's .1), where processes
// in the root namespace listen to be reachable from the namespaces.
func (n *Network) Gateway() net.IP { return net.ParseIP(n.st.Gateway) }

// State is a copy of what the network's marker records.
func (n *Network) State() State {
	st := n.st
	st.Namespaces = slices.Clone(n.st.Namespaces)
	return st
}

// Namespaces returns the network's namespaces in the order they were added.
func (n *Network) Namespaces() []*Namespace {
	out := make([]*Namespace, len(n.st.Namespaces))
	for i, s := range n.st.Namespaces {
		out[i] = &Namespace{st: s, network: n}
	}
	return out
}

// Namespace returns the namespace added under name, or nil.
func (n *Network) Namespace(name string) *Namespace {
	for _, s := range n.st.Namespaces {
		if s.Name == name {
			return &Namespace{st: s, network: n}
		}
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,30}$`)

// AddNamespace creates a namespace for name ("node-1": a-z, 0-9 and '-'),
// attaches it to the bridge with the next free address of the subnet
// (from .10 up) on its eth0, brings eth0 and lo up, turns IPv6 off and
// installs the (empty) FaultChain.
func (n *Network) AddNamespace(ctx context.Context, name string) (*Namespace, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("netns: namespace name %q: want a-z, 0-9 and '-', at most 31 characters", name)
	}
	if n.Namespace(name) != nil {
		return nil, fmt.Errorf("netns: namespace %q already exists in network %s", name, n.st.ID)
	}
	idx := len(n.st.Namespaces) + 1
	if idx > 240 {
		return nil, fmt.Errorf("netns: network %s is full", n.st.ID)
	}
	s := NamespaceState{
		Name:     name,
		Netns:    n.st.Prefix + "-" + n.st.ID + "-" + name,
		IP:       hostIP(n.Subnet(), 9+idx).String(),
		HostVeth: n.st.Prefix + n.st.ID + "v" + strconv.Itoa(idx),
	}
	unlock, err := lockMarkers()
	if err != nil {
		return nil, err
	}
	n.st.Namespaces = append(n.st.Namespaces, s)
	err = n.writeMarker()
	unlock()
	if err != nil {
		return nil, err
	}
	ns := &Namespace{st: s, network: n}
	ones, _ := n.Subnet().Mask.Size()
	steps := [][]string{
		{"ip", "netns", "add", s.Netns},
		{"ip", "link", "add", s.HostVeth, "type", "veth", "peer", "name", "eth0", "netns", s.Netns},
		{"ip", "link", "set", s.HostVeth, "master", n.st.Bridge},
		{"ip", "link", "set", s.HostVeth, "up"},
		{"ip", "-n", s.Netns, "link", "set", "lo", "up"},
		{"ip", "-n", s.Netns, "addr", "add", fmt.Sprintf("%s/%d", s.IP, ones), "dev", "eth0"},
		{"ip", "-n", s.Netns, "link", "set", "eth0", "up"},
	}
	for i, argv := range steps {
		if _, err := run(ctx, argv[0], argv[1:]...); err != nil {
			return nil, fmt.Errorf("namespace %s: %w", name, err)
		}
		if i == 1 { // the veth exists now, still down: no IPv6 on its bridge end
			_ = os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", s.HostVeth, "disable_ipv6"), []byte("1"), 0o644)
		}
	}
	if _, err := ns.Run(ctx, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"); err != nil {
		return nil, fmt.Errorf("namespace %s: IPv6 off: %w", name, err)
	}
	for _, argv := range [][]string{
		{"iptables", "-w", "-N", FaultChain},
		{"iptables", "-w", "-I", "OUTPUT", "1", "-j", FaultChain},
	} {
		if _, err := ns.Run(ctx, argv...); err != nil {
			return nil, fmt.Errorf("namespace %s: %w", name, err)
		}
	}
	return ns, nil
}

// Delete tears the network down: it kills any process still inside one
// of its namespaces (and says so in the error), deletes the veths, the
// namespaces and the bridge, and removes the marker. It carries on past
// errors and may be called again.
func (n *Network) Delete(ctx context.Context) error {
	var errs []error
	var left []string
	for _, s := range n.st.Namespaces {
		if !exists(filepath.Join("/run/netns", s.Netns)) {
			continue
		}
		pids := namespacePids(ctx, s.Netns)
		for _, pid := range pids {
			left = append(left, describePid(pid))
			if err := proc.KillTree(pid, 10*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("namespace %s: %w", s.Netns, err))
			}
		}
	}
	for _, s := range n.st.Namespaces {
		if linkExists(s.HostVeth) {
			if _, err := run(ctx, "ip", "link", "del", s.HostVeth); err != nil && linkExists(s.HostVeth) {
				errs = append(errs, err)
			}
		}
		if exists(filepath.Join("/run/netns", s.Netns)) {
			if _, err := run(ctx, "ip", "netns", "del", s.Netns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if n.st.Bridge != "" && linkExists(n.st.Bridge) {
		if _, err := run(ctx, "ip", "link", "del", n.st.Bridge); err != nil && linkExists(n.st.Bridge) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(n.markerPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(left) > 0 {
		// Torn down all the same; the caller should have stopped these.
		errs = append(errs, fmt.Errorf("netns %s: killed processes still running in its namespaces: %s", n.st.ID, strings.Join(left, "; ")))
	}
	return errors.Join(errs...)
}

// Stale reports whether the network's owner is gone (see Options.KeepWhile).
func (st State) Stale() bool {
	if st.KeepWhile != "" {
		return !exists(st.KeepWhile)
	}
	if st.OwnerPid <= 0 || !proc.Alive(st.OwnerPid) {
		return true
	}
	start, ok := startTime(st.OwnerPid)
	return ok && st.OwnerStart != 0 && start != st.OwnerStart
}

// Name is the namespace's name as given to AddNamespace.
func (ns *Namespace) Name() string { return ns.st.Name }

// Netns is the namespace's name under /run/netns (for ip netns exec).
func (ns *Namespace) Netns() string { return ns.st.Netns }

// Path is the namespace's bind mount, /run/netns/NETNS.
func (ns *Namespace) Path() string { return filepath.Join("/run/netns", ns.st.Netns) }

// IP is the namespace's address on the bridge.
func (ns *Namespace) IP() net.IP { return net.ParseIP(ns.st.IP) }

// HostVeth is the name of the namespace's veth end on the bridge.
func (ns *Namespace) HostVeth() string { return ns.st.HostVeth }

// Wrap returns argv prefixed so that it runs in the namespace:
// nsenter --net=PATH -- argv... . Only the network namespace changes
// (unlike ip netns exec, which also unshares the mount namespace and
// remounts /sys), so mounts a daemon makes, such as containerd's
// overlays, stay visible to the caller. nsenter execs argv in place: the
// process keeps nsenter's pid.
func (ns *Namespace) Wrap(argv ...string) []string {
	return append([]string{"nsenter", "--net=" + ns.Path(), "--"}, argv...)
}

// Spec returns spec changed to run in the namespace (see Wrap). spec.Path
// is resolved in this process's PATH first.
func (ns *Namespace) Spec(spec proc.Spec) (proc.Spec, error) {
	bin, err := exec.LookPath(spec.Path)
	if err != nil {
		return spec, fmt.Errorf("%s in namespace %s: %w", spec.Name, ns.st.Name, err)
	}
	if spec.Name == "" {
		spec.Name = filepath.Base(bin)
	}
	argv := ns.Wrap(append([]string{bin}, spec.Args...)...)
	spec.Path, spec.Args = argv[0], argv[1:]
	return spec, nil
}

// Command returns an exec.Cmd that runs name with args in the namespace.
func (ns *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := ns.Wrap(append([]string{name}, args...)...)
	return exec.CommandContext(ctx, argv[0], argv[1:]...)
}

// Run runs argv in the namespace and returns its combined output; the
// error names the command and includes the output.
func (ns *Namespace) Run(ctx context.Context, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("netns: Run: empty command")
	}
	out, err := ns.Command(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in namespace %s: %s: %w: %s", ns.st.Name, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Do runs fn on an OS thread that has entered the namespace, so sockets
// fn opens (net.Listen, net.Dial) belong to it and keep doing so. The
// thread is never reused for other goroutines afterwards.
func (ns *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Not unlocked: the thread ends with this goroutine, so no other
		// goroutine ever runs in the namespace by accident.
		lockOSThread()
		f, err := os.Open(ns.Path())
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := setns(int(f.Fd())); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.Path(), err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen opens a listener inside the namespace (see Do).
func (ns *Namespace) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// DialContext dials from inside the namespace (see Do).
func (ns *Namespace) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Action is what a Block rule does with the packets it matches.
type Action string

const (
	// Reject answers TCP with a reset (the connection is refused at once)
	// and other protocols with ICMP port unreachable.
	Reject Action = "reject"
	// Drop silently drops: connections time out.
	Drop Action = "drop"
)

// Rule is an iptables rule Block added to a namespace's FaultChain.
type Rule struct {
	ns   *Namespace
	spec []string
}

// String describes the rule as iptables does (-A PW-FAULTS ...).
func (r *Rule) String() string { return "-A " + FaultChain + " " + strings.Join(r.spec, " ") }

// Block cuts the namespace's egress to ip:port (TCP; port 0: every port)
// with action, until the rule is removed.
func (ns *Namespace) Block(ctx context.Context, ip net.IP, port int, action Action) (*Rule, error) {
	if ip == nil || ip.To4() == nil {
		return nil, fmt.Errorf("netns: Block %s in %s: want an IPv4 address", ip, ns.st.Name)
	}
	spec := []string{"-d", ip.String() + "/32", "-p", "tcp"}
	if port > 0 {
		spec = append(spec, "-m", "tcp", "--dport", strconv.Itoa(port))
	}
	switch action {
	case Reject, "":
		spec = append(spec, "-j", "REJECT", "--reject-with", "tcp-reset")
	case Drop:
		spec = append(spec, "-j", "DROP")
	default:
		return nil, fmt.Errorf("netns: Block: unknown action %q", action)
	}
	if _, err := ns.Run(ctx, append([]string{"iptables", "-w", "-A", FaultChain}, spec...)...); err != nil {
		return nil, err
	}
	return &Rule{ns: ns, spec: spec}, nil
}

// Remove deletes the rule (no error if it is already gone).
func (r *Rule) Remove(ctx context.Context) error {
	if _, err := r.ns.Run(ctx, append([]string{"iptables", "-w", "-C", FaultChain}, r.spec...)...); err != nil {
		return nil // not there
	}
	_, err := r.ns.Run(ctx, append([]string{"iptables", "-w", "-D", FaultChain}, r.spec...)...)
	return err
}

// Unblock removes every rule Block added in the namespace.
func (ns *Namespace) Unblock(ctx context.Context) error {
	_, err := ns.Run(ctx, "iptables", "-w", "-F", FaultChain)
	return err
}

// Rules lists the namespace's FaultChain rules as iptables -S prints them.
func (ns *Namespace) Rules(ctx context.Context) ([]string, error) {
	out, err := ns.Run(ctx, "iptables", "-w", "-S", FaultChain)
	if err != nil {
		return nil, err
	}
	var rules []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, "-A ") {
			rules = append(rules, l)
		}
	}
	return rules, nil
}

// Pids lists the processes running in the namespace.
func (ns *Namespace) Pids(ctx context.Context) []int { return namespacePids(ctx, ns.st.Netns) }

// CleanupStale removes what runs of this package with prefix (default
// DefaultPrefix) left behind: every network whose marker says its owner
// is gone (see State.Stale), and every namespace, bridge or veth named
// like this package names them that no marker accounts for. It returns
// what it removed.
func CleanupStale(ctx context.Context, prefix string) ([]string, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("netns: prefix %q: want 1 to 5 characters a-z, 0-9", prefix)
	}
	if err := checkBinaries(); err != nil {
		return nil, err
	}
	unlock, err := lockMarkers()
	if err != nil {
		return nil, err
	}
	defer unlock()
	var removed []string
	var errs []error
	known := map[string]bool{} // run ids with a live marker
	markers, _ := filepath.Glob(filepath.Join(MarkerDir, "*.json"))
	for _, m := range markers {
		st, err := readMarker(m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if st.Prefix != prefix {
			continue
		}
		if !st.Stale() {
			known[st.ID] = true
			continue
		}
		n := &Network{st: st}
		if err := n.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
		removed = append(removed, "network "+st.ID+" ("+st.Bridge+", "+st.Subnet+")")
	}
	// Resources without a marker: a run that died before writing one
	// cannot have created any, so these come from a marker deleted by hand.
	nsRE := regexp.MustCompile(`^` + prefix + `-([0-9a-f]{6})-`)
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		m := nsRE.FindStringSubmatch(e.Name())
		if m == nil || known[m[1]] {
			continue
		}
		for _, pid := range namespacePids(ctx, e.Name()) {
			_ = proc.KillTree(pid, 10*time.Second)
		}
		if _, err := run(ctx, "ip", "netns", "del", e.Name()); err != nil {
			errs = append(errs, err)
		} else {
			removed = append(removed, "namespace "+e.Name())
		}
	}
	linkRE := regexp.MustCompile(`^` + prefix + `(?:br([0-9a-f]{6})|([0-9a-f]{6})v[0-9]+)$`)
	links, err := os.ReadDir("/sys/class/net")
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		m := linkRE.FindStringSubmatch(l.Name())
		if m == nil || known[m[1]+m[2]] {
			continue
		}
		if _, err := run(ctx, "ip", "link", "del", l.Name()); err != nil && linkExists(l.Name()) {
			errs = append(errs, err)
		} else {
			removed = append(removed, "link "+l.Name())
		}
	}
	return removed, errors.Join(errs...)
}

// --- helpers

func checkBinaries() error {
	if os.Geteuid() != 0 {
		return errors.New("netns: needs root")
	}
	for _, b := range Binaries {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("netns: %w", err)
		}
	}
	return nil
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// runJSON runs an `ip -j` listing and decodes its standard output alone:
// ip writes warnings such as "Device ... does not exist" to standard error
// when a link goes away while it lists (another test's network being
// deleted), and those are not JSON. A listing that races a deletion is
// tried again.
func runJSON(ctx context.Context, v any, name string, args ...string) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err = cmd.Run(); err != nil {
			err = fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
			continue
		}
		if err = json.Unmarshal(stdout.Bytes(), v); err != nil {
			err = fmt.Errorf("%s %s: %w (stderr: %s)", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
			continue
		}
		return nil
	}
	return err
}

func newID() (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func (n *Network) markerPath() string { return filepath.Join(MarkerDir, n.st.ID+".json") }

func (n *Network) writeMarker() error {
	if err := os.MkdirAll(MarkerDir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(n.st, "", "  ")
	if err != nil {
		return err
	}
	tmp := n.markerPath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, n.markerPath())
}

func readMarker(path string) (State, error) {
	var st State
	b, err := os.ReadFile(path)
	if err != nil {
		return st, fmt.Errorf("netns marker: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("netns marker %s: %w", path, err)
	}
	return st, nil
}

// lockMarkers takes an exclusive flock on MarkerDir/.lock, so that two
// runs never pick the same subnet and CleanupStale never races a Create.
func lockMarkers() (func(), error) {
	if err := os.MkdirAll(MarkerDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(MarkerDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// pickSubnet returns want (which must be a /24 no one uses) or the first
// free base.N.0/24.
func pickSubnet(ctx context.Context, want, base string) (*net.IPNet, error) {
	used, err := usedNets(ctx)
	if err != nil {
		return nil, err
	}
	overlaps := func(s *net.IPNet) string {
		for _, u := range used {
			if u.net.Contains(s.IP) || s.Contains(u.net.IP) {
				return u.what
			}
		}
		return ""
	}
	if want != "" {
		ip, s, err := net.ParseCIDR(want)
		if err != nil {
			return nil, fmt.Errorf("netns: subnet %q: %w", want, err)
		}
		if ones, bits := s.Mask.Size(); ones != 24 || bits != 32 || !ip.Equal(s.IP) {
			return nil, fmt.Errorf("netns: subnet %q: want an IPv4 /24 network address like 10.203.7.0/24", want)
		}
		if what := overlaps(s); what != "" {
			return nil, fmt.Errorf("netns: subnet %s is in use (%s)", want, what)
		}
		return s, nil
	}
	for i := 1; i < 255; i++ {
		_, s, err := net.ParseCIDR(fmt.Sprintf("%s.%d.0/24", base, i))
		if err != nil {
			return nil, fmt.Errorf("netns: subnet base %q: %w", base, err)
		}
		if overlaps(s) == "" {
			return s, nil
		}
	}
	return nil, fmt.Errorf("netns: no free /24 in %s.0.0/16", base)
}

type usedNet struct {
	net  *net.IPNet
	what string
}

// usedNets lists the IPv4 networks of every address and route in the
// root namespace, and the subnets of every marker. The default route does
// not count.
func usedNets(ctx context.Context) ([]usedNet, error) {
	var out []usedNet
	var links []struct {
		Ifname   string `json:"ifname"`
		AddrInfo []struct {
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := runJSON(ctx, &links, "ip", "-j", "-4", "addr", "show"); err != nil {
		return nil, err
	}
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if _, s, err := net.ParseCIDR(fmt.Sprintf("%s/%d", a.Local, a.Prefixlen)); err == nil {
				out = append(out, usedNet{s, "address on " + l.Ifname})
			}
		}
	}
	var rs []struct {
		Dst string `json:"dst"`
		Dev string `json:"dev"`
	}
	if err := runJSON(ctx, &rs, "ip", "-j", "-4", "route", "show", "table", "all"); err != nil {
		return nil, err
	}
	for _, r := range rs {
		if r.Dst == "" || r.Dst == "default" {
			continue
		}
		dst := r.Dst
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if _, s, err := net.ParseCIDR(dst); err == nil && !s.IP.IsLoopback() {
			if ones, _ := s.Mask.Size(); ones == 0 {
				continue
			}
			out = append(out, usedNet{s, "route via " + r.Dev})
		}
	}
	markers, _ := filepath.Glob(filepath.Join(MarkerDir, "*.json"))
	for _, m := range markers {
		if st, err := readMarker(m); err == nil {
			if _, s, err := net.ParseCIDR(st.Subnet); err == nil {
				out = append(out, usedNet{s, "network " + st.ID})
			}
		}
	}
	return out, nil
}

// hostIP is the subnet's address with the last octet set to host.
func hostIP(subnet *net.IPNet, host int) net.IP {
	ip := slices.Clone(subnet.IP.To4())
	ip[3] = byte(host)
	return ip
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func linkExists(name string) bool { return exists(filepath.Join("/sys/class/net", name)) }

// namespacePids lists the pids whose network namespace is netns, as
// ip netns pids does (by the namespace's inode).
func namespacePids(ctx context.Context, netns string) []int {
	out, err := run(ctx, "ip", "netns", "pids", netns)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

func describePid(pid int) string {
	cl, err := proc.Cmdline(pid)
	if err != nil {
		return strconv.Itoa(pid)
	}
	if len(cl) > 120 {
		cl = cl[:120] + "…"
	}
	return fmt.Sprintf("%d (%s)", pid, cl)
}

// startTime is the process's start time in clock ticks after boot (field
// 22 of /proc/PID/stat), to tell a pid from a reused one.
func startTime(pid int) (uint64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	return v, err == nil
}
