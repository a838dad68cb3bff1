package netpath

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
)

// Resolver resolves registry names with the node's resolver configuration
// (its resolv.conf nameservers) rather than the agent pod's, which differ
// under dnsPolicy ClusterFirstWithHostNet.
type Resolver struct {
	// Path is the resolv.conf read.
	Path        string
	Nameservers []string
	next        atomic.Uint32
	resolver    *net.Resolver
}

// LoadResolver reads the nameservers of a resolv.conf. The search list and
// options of the agent's own resolv.conf still apply (Go's resolver reads
// those from /etc/resolv.conf); registry names are fully qualified in
// practice.
func LoadResolver(path string) (*Resolver, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("node resolver configuration: %w (set --resolv-conf to the host's resolv.conf as mounted in the agent)", err)
	}
	defer f.Close()
	r := &Resolver{Path: path}
	sc := bufio.NewScanner(io.LimitReader(f, maxUnitBytes))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			ip := net.ParseIP(strings.SplitN(fields[1], "%", 2)[0])
			if ip == nil {
				return nil, fmt.Errorf("%s: nameserver %q is not an IP address", path, fields[1])
			}
			r.Nameservers = append(r.Nameservers, net.JoinHostPort(fields[1], "53"))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(r.Nameservers) == 0 {
		return nil, fmt.Errorf("%s names no nameserver", path)
	}
	r.resolver = &net.Resolver{PreferGo: true, Dial: r.dial}
	return r, nil
}

// dial sends Go's DNS queries to the node's nameservers, in turn.
func (r *Resolver) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	i := int(r.next.Add(1)-1) % len(r.Nameservers)
	var d net.Dialer
	return d.DialContext(ctx, network, r.Nameservers[i])
}

// Net returns the net.Resolver that uses the node's nameservers.
func (r *Resolver) Net() *net.Resolver { return r.resolver }
