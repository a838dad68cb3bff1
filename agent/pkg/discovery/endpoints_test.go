package discovery

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// endpoint is one endpoint of a test slice.
type endpoint struct {
	addr               string
	ready, terminating *bool
}

// slice is an EndpointSlice of Service svc in namespace ns, as the
// EndpointSlice controller writes it.
func slice(name string, typ discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...endpoint) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "ns",
			Labels: map[string]string{discoveryv1.LabelServiceName: "svc", discoveryv1.LabelManagedBy: ControllerName},
		},
		AddressType: typ,
		Ports:       ports,
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, e.slice())
	}
	return s
}

// slice turns the test endpoint into an API one.
func (e endpoint) slice() discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{e.addr}, Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Terminating: e.terminating},
		TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "aggregator-" + e.addr}}
}

func port(name string, number int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(number), Protocol: ptr.To(corev1.ProtocolTCP)}
}

func ready(addr string) endpoint    { return endpoint{addr: addr, ready: ptr.To(true)} }
func notReady(addr string) endpoint { return endpoint{addr: addr, ready: ptr.To(false)} }

func TestReadyAddresses(t *testing.T) {
	v4, v6 := discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6
	grpcPort := []discoveryv1.EndpointPort{port("metrics", 8080), port("grpc", 9400)}
	for _, tc := range []struct {
		name   string
		slices []*discoveryv1.EndpointSlice
		port   string
		want   []string
		why    string
	}{
		{
			name:   "named port, ready and not ready",
			slices: []*discoveryv1.EndpointSlice{slice("a", v4, grpcPort, ready("10.0.0.2"), notReady("10.0.0.3"), ready("10.0.0.1"))},
			port:   "grpc",
			want:   []string{"10.0.0.1:9400", "10.0.0.2:9400"},
		},
		{
			name: "unknown readiness counts as ready; terminating is not ready",
			slices: []*discoveryv1.EndpointSlice{slice("a", v4, grpcPort,
				endpoint{addr: "10.0.0.1"},
				endpoint{addr: "10.0.0.2", ready: ptr.To(false), terminating: ptr.To(true)})},
			port: "grpc",
			want: []string{"10.0.0.1:9400"},
		},
		{
			name: "port resolved per slice; duplicates across slices once",
			slices: []*discoveryv1.EndpointSlice{
				slice("a", v4, []discoveryv1.EndpointPort{port("grpc", 9400)}, ready("10.0.0.1")),
				slice("b", v4, []discoveryv1.EndpointPort{port("grpc", 9500)}, ready("10.0.0.1"), ready("10.0.0.2")),
				slice("c", v4, []discoveryv1.EndpointPort{port("grpc", 9400)}, ready("10.0.0.1")),
			},
			port: "grpc",
			want: []string{"10.0.0.1:9400", "10.0.0.1:9500", "10.0.0.2:9500"},
		},
		{
			name:   "IPv6 in brackets",
			slices: []*discoveryv1.EndpointSlice{slice("a", v6, grpcPort, ready("fd00::2"), ready("fd00::1"))},
			port:   "grpc",
			want:   []string{"[fd00::1]:9400", "[fd00::2]:9400"},
		},
		{
			name: "dual stack",
			slices: []*discoveryv1.EndpointSlice{
				slice("a", v4, grpcPort, ready("10.0.0.1")),
				slice("b", v6, grpcPort, ready("fd00::1")),
			},
			port: "grpc",
			want: []string{"10.0.0.1:9400", "[fd00::1]:9400"},
		},
		{
			name:   "port number used as it is",
			slices: []*discoveryv1.EndpointSlice{slice("a", v4, grpcPort, ready("10.0.0.1"))},
			port:   "9401",
			want:   []string{"10.0.0.1:9401"},
		},
		{
			name:   "FQDN slices skipped",
			slices: []*discoveryv1.EndpointSlice{slice("a", discoveryv1.AddressTypeFQDN, grpcPort, ready("aggregator.example.com"))},
			port:   "grpc",
			why:    "no endpoints (no pod matches the Service's selector)",
		},
		{
			name:   "named port missing",
			slices: []*discoveryv1.EndpointSlice{slice("a", v4, []discoveryv1.EndpointPort{port("metrics", 8080)}, ready("10.0.0.1"))},
			port:   "grpc",
			why:    `no TCP port named "grpc" in its EndpointSlices`,
		},
		{
			name: "named port only for UDP",
			slices: []*discoveryv1.EndpointSlice{slice("a", v4, []discoveryv1.EndpointPort{
				{Name: ptr.To("grpc"), Port: ptr.To[int32](9400), Protocol: ptr.To(corev1.ProtocolUDP)},
			}, ready("10.0.0.1"))},
			port: "grpc",
			why:  `no TCP port named "grpc" in its EndpointSlices`,
		},
		{
			name: "unnamed port with nil protocol matches the empty name only",
			slices: []*discoveryv1.EndpointSlice{slice("a", v4, []discoveryv1.EndpointPort{
				{Name: ptr.To(""), Port: ptr.To[int32](9400)},
			}, ready("10.0.0.1"))},
			port: "grpc",
			why:  `no TCP port named "grpc" in its EndpointSlices`,
		},
		{
			name:   "none ready",
			slices: []*discoveryv1.EndpointSlice{slice("a", v4, grpcPort, notReady("10.0.0.1"), notReady("10.0.0.2"))},
			port:   "grpc",
			why:    "none of its 2 endpoints is ready",
		},
		{
			name:   "slice without endpoints",
			slices: []*discoveryv1.EndpointSlice{slice("a", v4, grpcPort)},
			port:   "grpc",
			why:    "no endpoints (no pod matches the Service's selector)",
		},
		{
			name: "no slices",
			port: "grpc",
			why:  "no EndpointSlices (no such Service, or it has no selector)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := readyAddresses(owns(tc.slices), tc.port)
			if !slices.Equal(got, tc.want) || why != tc.why {
				t.Errorf("readyAddresses = %q, %q; want %q, %q", got, why, tc.want, tc.why)
			}
		})
	}
}

// Only what the EndpointSlice controller wrote for the Service's pods is
// dialed: a slice someone else labelled with the Service's name, or an
// endpoint that is no pod, is not; and the addresses are capped.
func TestReadyAddressesOnlyFromTheController(t *testing.T) {
	grpcPort := []discoveryv1.EndpointPort{port("grpc", 9400)}
	v4 := discoveryv1.AddressTypeIPv4
	forged := slice("forged", v4, grpcPort, ready("203.0.113.7"))
	forged.Labels[discoveryv1.LabelManagedBy] = "someone-else"
	unmanaged := slice("unmanaged", v4, grpcPort, ready("203.0.113.8"))
	delete(unmanaged.Labels, discoveryv1.LabelManagedBy)
	mirrored := slice("mirrored", v4, grpcPort, ready("203.0.113.9"))
	mirrored.Labels[discoveryv1.LabelManagedBy] = "endpointslicemirroring-controller.k8s.io"
	noPod := slice("no-pod", v4, grpcPort, ready("203.0.113.10"), ready("203.0.113.11"), ready("203.0.113.12"), ready("10.0.0.1"))
	noPod.Endpoints[0].TargetRef = nil
	noPod.Endpoints[1].TargetRef.Kind = "Node"
	noPod.Endpoints[2].TargetRef.Namespace = "elsewhere"
	got, _ := readyAddresses(owns([]*discoveryv1.EndpointSlice{forged, unmanaged, mirrored, noPod}), "grpc")
	if !slices.Equal(got, []string{"10.0.0.1:9400"}) {
		t.Errorf("readyAddresses = %q, want only the controller's pod 10.0.0.1:9400", got)
	}
	if _, why := readyAddresses(owns([]*discoveryv1.EndpointSlice{forged}), "grpc"); !strings.Contains(why, "not managed by") {
		t.Errorf("why = %q, want it to say the slice is not the controller's", why)
	}

	var many []endpoint
	for i := range 3 * MaxAddresses {
		many = append(many, ready(fmt.Sprintf("10.1.%d.%d", i/250, i%250)))
	}
	got, _ = readyAddresses(owns([]*discoveryv1.EndpointSlice{slice("big", v4, grpcPort, many...)}), "grpc")
	if len(got) != MaxAddresses {
		t.Errorf("%d addresses from %d ready endpoints, want the cap %d", len(got), 3*MaxAddresses, MaxAddresses)
	}
}
