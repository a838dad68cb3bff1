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
	// Timeout is the probe timeout (--probe-timeout): no registry answer
	// waits longer for its headers or its TLS handshake. 0: 10s.
	Timeout time.Duration
}

// MaxResponseHeaderBytes bounds a registry's response headers: a registry
// that sends megabytes of headers cannot grow the agent's memory (each
// probe in flight would hold them).
const MaxResponseHeaderBytes = 64 << 10

// Bound applies the probe's bounds to t: response headers at most
// MaxResponseHeaderBytes, and waits for them and for the TLS handshake
// at most timeout (a dial timeout t has, e.g. hosts.toml's dial_timeout,
// is its dialer's and kept).
func Bound(t *http.Transport, timeout time.Duration) {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	t.MaxResponseHeaderBytes = MaxResponseHeaderBytes
	t.ResponseHeaderTimeout = timeout
	t.TLSHandshakeTimeout = timeout
	t.ExpectContinueTimeout = min(t.ExpectContinueTimeout, timeout)
}

// Apply sets the proxy, the resolver and the probe's bounds (Bound) on t. A dialer t already has (say,
// hosts.toml's dial_timeout) is kept: names are resolved with the node's
// resolver first and that dialer is given the address.
func (p Path) Apply(t *http.Transport) {
	Bound(t, p.Timeout)
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
