package discovery

import (
	"fmt"
	"net"
	"slices"
	"strconv"
)

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
// port name looked up among each slice's TCP ports. Slices of address type
// FQDN are skipped: they would need DNS, which this package is there to
// avoid. When there is no address, why says what the slices lacked.
func readyAddresses(endpointSlices []*EndpointSlice, port string) (addrs []string, why string) {
	number, err := portNumber(port)
	if err != nil {
		return nil, err.Error()
	}
	seen := map[string]bool{}
	endpoints, noPort := 0, 0
	for _, s := range endpointSlices {
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
			if len(ep.Addresses) == 0 {
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
	switch {
	case len(addrs) > 0:
		return addrs, ""
	case len(endpointSlices) == 0:
		return nil, "no EndpointSlices (no such Service, or it has no selector)"
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
