package discovery

import (
	"fmt"
	"net"
	"slices"
	"strconv"
)

// ControllerName is the value of the EndpointSlice controller's
// endpointslice.kubernetes.io/managed-by label: only slices it wrote, for
// the Service's selector, name the aggregator's pods. Anyone allowed to
// create EndpointSlices (or Endpoints, which the mirroring controller
// copies) in the namespace could otherwise point agents anywhere.
const ControllerName = "endpointslice-controller.k8s.io"

// MaxAddresses caps the aggregator addresses taken from the slices (in
// address order): an aggregator runs a few replicas, and a slice listing
// thousands must not make every agent dial thousands.
const MaxAddresses = 16

// fromController reports whether the EndpointSlice controller wrote s.
func fromController(s *EndpointSlice) bool {
	return s.Labels[labelManagedBy] == ControllerName
}

// targetsPod reports whether ep is a pod of the slice's namespace, as the
// controller's endpoints for a Service's selector are.
func targetsPod(s *EndpointSlice, ep Endpoint) bool {
	ref := ep.TargetRef
	return ref != nil && ref.Kind == "Pod" && (ref.Namespace == "" || ref.Namespace == s.Namespace)
}

// isReady is whether an endpoint takes traffic: its ready condition is not
// false. This is what kube-proxy routes a Service's traffic to (as long as
// any endpoint is ready): a nil condition means unknown and counts as
// ready, as the API says, and a terminating endpoint is never ready
// (serving, which may be true while terminating, is not used: the agent
// should move away from an aggregator that is shutting down, not to it).
func isReady(c EndpointConditions) bool {
	return c.Ready == nil || *c.Ready
}

// readyAddresses returns the sorted, distinct host:port addresses of the
// ready endpoints in slices, one per endpoint (its first address: the API
// says the others are fungible), on port: a port number as it is, or a
// port name looked up among each slice's TCP ports; at most MaxAddresses.
// Only slices the EndpointSlice controller wrote count, and of them only
// endpoints that are pods. Slices of address type FQDN are skipped: they
// would need DNS, which this package is there to avoid. When there is no
// address, why says what the slices lacked.
func readyAddresses(endpointSlices []*EndpointSlice, port string) (addrs []string, why string) {
	number, err := portNumber(port)
	if err != nil {
		return nil, err.Error()
	}
	seen := map[string]bool{}
	endpoints, noPort, foreign := 0, 0, 0
	for _, s := range endpointSlices {
		if !fromController(s) {
			foreign++
			continue
		}
		if s.AddressType != addressTypeIPv4 && s.AddressType != addressTypeIPv6 {
			continue
		}
		p := number
		if p == 0 {
			p = namedPort(s.Ports, port)
		}
		if p == 0 {
			noPort++
			continue
		}
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) == 0 || !targetsPod(s, ep) {
				continue
			}
			endpoints++
			if !isReady(ep.Conditions) {
				continue
			}
			a := net.JoinHostPort(ep.Addresses[0], strconv.Itoa(int(p)))
			if !seen[a] {
				seen[a] = true
				addrs = append(addrs, a)
			}
		}
	}
	slices.Sort(addrs)
	if len(addrs) > MaxAddresses {
		addrs = addrs[:MaxAddresses]
	}
	switch {
	case len(addrs) > 0:
		return addrs, ""
	case len(endpointSlices) == 0:
		return nil, "no EndpointSlices (no such Service, or it has no selector)"
	case foreign == len(endpointSlices):
		return nil, fmt.Sprintf("its EndpointSlices are not managed by the EndpointSlice controller (label %s=%s); they are not trusted", labelManagedBy, ControllerName)
	case endpoints == 0 && noPort > 0:
		return nil, fmt.Sprintf("no TCP port named %q in its EndpointSlices", port)
	case endpoints == 0:
		return nil, "no endpoints (no pod matches the Service's selector)"
	case endpoints == 1:
		return nil, "its one endpoint is not ready"
	default:
		return nil, fmt.Sprintf("none of its %d endpoints is ready", endpoints)
	}
}

// namedPort is the number of the TCP port called name, or 0.
func namedPort(ports []EndpointPort, name string) int32 {
	for _, p := range ports {
		if p.Name == nil || *p.Name != name || p.Port == nil {
			continue
		}
		if p.Protocol == nil || *p.Protocol == "TCP" {
			return *p.Port
		}
	}
	return 0
}
