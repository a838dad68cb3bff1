package netpath

import (
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

func (p Path) dialer() *net.Dialer {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	if p.Resolver != nil {
		d.Resolver = p.Resolver.Net()
	}
	return d
}

// Apply sets the proxy and resolver on t.
func (p Path) Apply(t *http.Transport) {
	t.Proxy = p.Proxy.Func()
	t.DialContext = p.dialer().DialContext
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
