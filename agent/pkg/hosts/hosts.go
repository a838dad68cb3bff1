// Package hosts decides which registry endpoints the node's runtime would
// try for a registry host, in the runtime's order.
//
// This first version knows containerd's defaults only (no hosts.toml, no
// mirrors): one upstream endpoint per host. Mirror configuration from
// hosts.toml and CRI-O's registries.conf plugs in behind Resolver.
package hosts

import (
	"context"
	"net"
	"strings"
)

// Role of an endpoint for the runtime.
type Role string

const (
	RoleUpstream Role = "upstream"
	RoleMirror   Role = "mirror"
)

// Endpoint is one place the runtime would ask for a manifest.
type Endpoint struct {
	// Scheme and host, e.g. https://registry-1.docker.io or http://127.0.0.1:5000.
	URL  string
	Role Role
	// Host is the registry host the image names (docker.io), sent to
	// mirrors as ?ns= the way containerd does.
	Host string
}

// Resolver returns the endpoints for a registry host, in the order the
// runtime tries them.
type Resolver interface {
	Endpoints(ctx context.Context, registryHost string) ([]Endpoint, error)
}

// Defaults is containerd's behaviour without any registry configuration.
type Defaults struct{}

// Endpoints implements Resolver.
func (Defaults) Endpoints(_ context.Context, host string) ([]Endpoint, error) {
	apiHost := host
	if host == "docker.io" {
		apiHost = "registry-1.docker.io"
	}
	scheme := "https"
	if IsLocalhost(host) {
		// containerd talks plain HTTP to a registry on the loopback host
		// unless told otherwise.
		scheme = "http"
	}
	return []Endpoint{{URL: scheme + "://" + apiHost, Role: RoleUpstream, Host: host}}, nil
}

// IsLocalhost reports whether host (with optional port) is the loopback
// host, following containerd's docker.MatchLocalhost.
func IsLocalhost(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = strings.Trim(host, "[]")
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
