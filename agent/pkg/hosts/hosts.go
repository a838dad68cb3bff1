// Package hosts decides which registry endpoints the node's runtime would
// try for an image, in the runtime's order, with the TLS settings the
// runtime would use: containerd's hosts.toml (config_path) and legacy
// registry.mirrors, or CRI-O's registries.conf.
package hosts

import (
	"context"
	"net"
	"net/http"
	"strings"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Role of an endpoint for the runtime: the report's and the wire's
// pullwatch.v1 EndpointRole, whose words are "upstream" and "mirror".
type Role = pb.EndpointRole

// The roles.
const (
	RoleUpstream = pb.EndpointRole_ENDPOINT_ROLE_UPSTREAM
	RoleMirror   = pb.EndpointRole_ENDPOINT_ROLE_MIRROR
)

// Endpoint is one place the runtime would ask for a manifest.
type Endpoint struct {
	// URL is the registry API base the runtime uses, scheme, host and path:
	// https://registry-1.docker.io/v2, http://127.0.0.1:5000/v2, or a
	// hosts.toml override_path.
	URL  string
	Role Role
	// Host is the registry host the image names (docker.io), sent to
	// mirrors as ?ns= the way containerd does.
	Host string
	// Repository overrides the image's repository path at this endpoint
	// (CRI-O prefix rewriting); empty means the image's own.
	Repository string
	// Client carries the TLS settings (ca, client certificate,
	// skip_verify), proxy and resolver the runtime would use for this
	// endpoint. Nil means the prober's default client.
	Client *http.Client
	// Header is sent with every request (hosts.toml header).
	Header http.Header
	// Skip, when set, says why the runtime would not ask this endpoint for
	// this reference (e.g. a mirror without the resolve capability and a
	// tag). Skipped endpoints are reported, not probed.
	Skip string
	// Source says which configuration produced the endpoint.
	Source string
	// RuntimeAuth are the credentials the runtime's own configuration
	// names for this endpoint's host (containerd's registry.configs
	// auth): the runtime sends them when the kubelet hands it none.
	RuntimeAuth *RuntimeAuth
}

// Resolver returns the endpoints for an image, in the order the runtime
// tries them.
type Resolver interface {
	Endpoints(ctx context.Context, ref imageref.Ref) ([]Endpoint, error)
}

// Defaults is containerd's behaviour without any registry configuration.
type Defaults struct{}

// Endpoints implements Resolver.
func (Defaults) Endpoints(_ context.Context, ref imageref.Ref) ([]Endpoint, error) {
	host := ref.Registry()
	apiHost, _ := imageref.APIHost(host)
	scheme := "https"
	if IsLocalhost(host) {
		// containerd talks plain HTTP to a registry on the loopback host
		// unless told otherwise.
		scheme = "http"
	}
	return []Endpoint{{URL: scheme + "://" + apiHost + "/v2", Role: RoleUpstream, Host: host, Source: "default"}}, nil
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

// roleFor is mirror when the endpoint host is not the image's registry
// (nor where its API is served: registry-1.docker.io for docker.io).
func roleFor(registryHost, endpointHost string) Role {
	if apiHost, _ := imageref.APIHost(registryHost); endpointHost == registryHost || endpointHost == apiHost {
		return RoleUpstream
	}
	return RoleMirror
}
