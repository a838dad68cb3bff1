package hosts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/containerd/v2/core/remotes/docker"
)

// loadedHosts keeps each registry host's endpoints as containerd's loader
// built them while the files it read are unchanged. Every load builds new
// HTTP clients and transports (containerd's ConfigureHosts does), so
// loading for every image would cost a new connection and TLS handshake per
// image and round and leave an idle connection behind for each: with 200
// images, hundreds of transports, most of the agent's memory and CPU. A
// change to the host's hosts.toml, to any file of its directory or to a ca
// or client file it names is seen at the next image, as containerd sees it
// at its next pull.
type loadedHosts struct {
	mu     sync.Mutex
	byHost map[string]loadedHost
}

type loadedHost struct {
	fingerprint string
	hosts       []docker.RegistryHost
}

// get returns host's endpoints: the ones loaded before while fingerprint
// is the same, else load's (kept when fingerprint is not empty).
func (l *loadedHosts) get(host, fingerprint string, load func(string) ([]docker.RegistryHost, error)) ([]docker.RegistryHost, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h, ok := l.byHost[host]; ok && fingerprint != "" && h.fingerprint == fingerprint {
		return h.hosts, nil
	}
	hosts, err := load(host)
	if err != nil {
		return nil, err
	}
	if l.byHost == nil {
		l.byHost = map[string]loadedHost{}
	}
	if fingerprint == "" {
		delete(l.byHost, host)
	} else {
		l.byHost[host] = loadedHost{fingerprint: fingerprint, hosts: hosts}
	}
	return hosts, nil
}

// fingerprint identifies what containerd's loader reads for host: the
// host's directory (which one, its files' names, sizes and modification
// times), its hosts.toml's bytes and the ca and client files it names.
// "" when it cannot tell (then the host is loaded again every time).
func (c *Containerd) fingerprint(host string) string {
	dir, err := c.hostDir(host)
	if err != nil || dir == "" {
		return "no host directory"
	}
	h := sha256.New()
	stat := func(p string) {
		if fi, err := os.Stat(p); err == nil {
			fmt.Fprintf(h, "%s\x00%d\x00%d\x00", p, fi.Size(), fi.ModTime().UnixNano())
		} else {
			fmt.Fprintf(h, "%s\x00missing\x00", p)
		}
	}
	fmt.Fprintf(h, "%s\x00", dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		stat(filepath.Join(dir, e.Name()))
	}
	b, err := readLimited(filepath.Join(dir, "hosts.toml"))
	if err != nil {
		if os.IsNotExist(err) {
			return hex.EncodeToString(h.Sum(nil))
		}
		return ""
	}
	h.Write(b)
	var named []string
	if _, _, err := rewriteHostsFilePaths(b, func(p string) string { named = append(named, p); return p }); err != nil {
		return hex.EncodeToString(h.Sum(nil)) // not TOML: the loader reads no named file
	}
	for _, p := range named {
		switch {
		case !filepath.IsAbs(p):
			stat(filepath.Join(dir, p))
		case c.opts.Root.Dir() != "":
			stat(c.opts.Root.Path(p))
		default:
			stat(p)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// defaultClient is containerd's default transport on the node's network
// path, built once: it depends on no file (see loadedHosts for why it is
// not built per image).
func (c *Containerd) defaultClient() (*http.Client, error) {
	c.defaultOnce.Do(func() {
		client := &http.Client{Transport: docker.DefaultHTTPTransport(nil)}
		if c.opts.UpdateClient != nil {
			c.defaultErr = c.opts.UpdateClient(client)
		}
		c.defaultHTTP = client
	})
	return c.defaultHTTP, c.defaultErr
}
