package netpath

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Path is the node's network path as the runtime has it.
type Path struct {
	Proxy ProxyConfig
	// Resolver is the node's DNS; nil uses the process's.
	Resolver *Resolver
}

// Apply sets the proxy and resolver on t. A dialer t already has (say,
// hosts.toml's dial_timeout) is kept: names are resolved with the node's
// resolver first and that dialer is given the address.
func (p Path) Apply(t *http.Transport) {
	t.Proxy = p.Proxy.Func()
	dial := t.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	if p.Resolver == nil {
		t.DialContext = dial
		return
	}
	resolver := p.Resolver.Net()
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || net.ParseIP(host) != nil {
			return dial(ctx, network, addr)
		}
		ips, err := resolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, err
		}
		var firstErr error
		for _, ip := range ips {
			conn, err := dial(ctx, network, net.JoinHostPort(ip.String(), port))
			if err == nil {
				return conn, nil
			}
			if firstErr == nil {
				firstErr = err
			}
		}
		return nil, firstErr
	}
}

// UpdateClient applies the path to a client built by containerd's hosts
// configuration (its transport is an *http.Transport).
func (p Path) UpdateClient(c *http.Client) error {
	t, ok := c.Transport.(*http.Transport)
	if !ok {
		return fmt.Errorf("registry client transport is %T, not *http.Transport", c.Transport)
	}
	p.Apply(t)
	return nil
}

// Transport is a fresh default transport on the path.
func (p Path) Transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	p.Apply(t)
	return t
}
