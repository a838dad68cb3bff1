// Package discovery finds the aggregator's ready pods through the Kubernetes
// API, for agents that share the node's network (hostNetwork) and so cannot
// count on cluster DNS or kube-proxy: a gRPC name resolver for targets
// kubernetes:///SERVICE.NAMESPACE:PORT (the form of sercand/kuberesolver)
// that watches the Service's EndpointSlices and hands gRPC the address of
// every ready endpoint.
package discovery

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Scheme is the URI scheme of the targets this package resolves.
const Scheme = "kubernetes"

// Form is what a target looks like, for error messages and help texts.
const Form = "kubernetes:///SERVICE.NAMESPACE:PORT"

// Target is a Service port whose ready endpoints the resolver follows.
type Target struct {
	Service   string
	Namespace string
	// Port is the name of one of the Service's ports (as in its
	// EndpointSlices), or a port number that is dialed on every endpoint as
	// it is: the pods' port, which is not necessarily the Service's.
	Port string
}

// ServerName is the Service's DNS name, SERVICE.NAMESPACE.svc: the
// :authority of streams to its pods' addresses, and the name its TLS
// certificate carries (the pods' addresses are not in it).
func (t Target) ServerName() string { return t.Service + "." + t.Namespace + ".svc" }

// String is the target in its canonical form.
func (t Target) String() string {
	return Scheme + ":///" + t.Service + "." + t.Namespace + ":" + t.Port
}

// IsTarget reports whether address names the kubernetes scheme, i.e.
// whether it is for this package (and ParseTarget) rather than for DNS.
func IsTarget(address string) bool {
	return len(address) > len(Scheme) && strings.EqualFold(address[:len(Scheme)+1], Scheme+":")
}

// ParseTarget parses kubernetes:///SERVICE.NAMESPACE:PORT. SERVICE.NAMESPACE
// may go on as in a DNS name (SERVICE.NAMESPACE.svc, or with the cluster
// domain after it), so that a HOST:PORT address of a Service can be turned
// into a target by putting kubernetes:/// in front of it.
func ParseTarget(target string) (Target, error) {
	if !IsTarget(target) {
		return Target{}, fmt.Errorf("target %q: scheme is not %s: want %s", target, Scheme, Form)
	}
	// Split by hand rather than with url.Parse, which rejects a port name
	// in the authority before it could be explained.
	rest, hier := strings.CutPrefix(target[len(Scheme)+1:], "//")
	authority, path := "", rest
	if hier {
		authority, path, _ = strings.Cut(rest, "/")
	}
	t, err := parse(authority, !hier, path)
	if err != nil {
		return Target{}, fmt.Errorf("target %q: %w", target, err)
	}
	return t, nil
}

// parse checks the parts of a target URI: an empty authority and the
// endpoint (the path, with or without its leading slash).
func parse(authority string, opaque bool, endpoint string) (Target, error) {
	if opaque {
		return Target{}, fmt.Errorf("want %s (three slashes after %s:)", Form, Scheme)
	}
	if authority != "" {
		return Target{}, fmt.Errorf("unexpected authority %q: want %s (three slashes after %s:)", authority, Form, Scheme)
	}
	endpoint = strings.TrimPrefix(endpoint, "/")
	if endpoint == "" {
		return Target{}, fmt.Errorf("no service: want %s", Form)
	}
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		var addrErr *net.AddrError
		if errors.As(err, &addrErr) && addrErr.Err == "missing port in address" {
			return Target{}, fmt.Errorf("no port in %q: want %s, PORT a Service port's name or a port number", endpoint, Form)
		}
		return Target{}, fmt.Errorf("%q: %w: want %s", endpoint, err, Form)
	}
	labels := strings.Split(host, ".")
	if len(labels) < 2 || len(labels) > 2 && labels[2] != "svc" {
		return Target{}, fmt.Errorf("%q is not SERVICE.NAMESPACE: want %s", host, Form)
	}
	t := Target{Service: labels[0], Namespace: labels[1], Port: port}
	if errs := validation.IsDNS1035Label(t.Service); len(errs) > 0 {
		return Target{}, fmt.Errorf("service name %q: %s", t.Service, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Label(t.Namespace); len(errs) > 0 {
		return Target{}, fmt.Errorf("namespace %q: %s", t.Namespace, strings.Join(errs, "; "))
	}
	if _, err := portNumber(port); err != nil {
		return Target{}, err
	}
	return t, nil
}

// portNumber returns the port number of a numeric port, 0 for a port name,
// or an error for neither.
func portNumber(port string) (int32, error) {
	if port != "" && strings.Trim(port, "0123456789") == "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return 0, fmt.Errorf("port %s: not in 1-65535", port)
		}
		return int32(n), nil
	}
	if errs := validation.IsValidPortName(port); len(errs) > 0 {
		return 0, fmt.Errorf("port %q is neither a number nor a port name: %s", port, strings.Join(errs, "; "))
	}
	return 0, nil
}
