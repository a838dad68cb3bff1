package discovery

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The part of the discovery.k8s.io/v1 EndpointSlice API that the resolver
// reads, decoded from the API server's JSON: k8s.io/api's own types would
// bring the whole core/v1 group into the agent's binary (an EndpointSlice
// endpoint's targetRef is a core/v1 ObjectReference), about 1.4 MB of it.
// Field names and JSON keys are the API's.

// groupVersion is discovery.k8s.io/v1.
var groupVersion = schema.GroupVersion{Group: "discovery.k8s.io", Version: "v1"}

// labelServiceName labels an EndpointSlice with its Service's name
// (discovery.k8s.io/v1 LabelServiceName).
const labelServiceName = "kubernetes.io/service-name"

// labelManagedBy names the controller that manages an EndpointSlice
// (discovery.k8s.io/v1 LabelManagedBy).
const labelManagedBy = "endpointslice.kubernetes.io/managed-by"

// Address types of an EndpointSlice.
const (
	addressTypeIPv4 = "IPv4"
	addressTypeIPv6 = "IPv6"
)

// EndpointSlice is a discovery.k8s.io/v1 EndpointSlice, as far as the
// resolver reads it.
type EndpointSlice struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	AddressType       string         `json:"addressType"`
	Endpoints         []Endpoint     `json:"endpoints"`
	Ports             []EndpointPort `json:"ports"`
}

// Endpoint is one endpoint of an EndpointSlice.
type Endpoint struct {
	Addresses  []string           `json:"addresses"`
	Conditions EndpointConditions `json:"conditions,omitempty"`
	TargetRef  *TargetRef         `json:"targetRef,omitempty"`
}

// TargetRef is the part of an endpoint's targetRef (a core/v1
// ObjectReference) the resolver reads: which kind of object, where.
type TargetRef struct {
	Kind      string `json:"kind,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
}

// EndpointConditions are an endpoint's conditions; nil is unknown.
type EndpointConditions struct {
	Ready       *bool `json:"ready,omitempty"`
	Serving     *bool `json:"serving,omitempty"`
	Terminating *bool `json:"terminating,omitempty"`
}

// EndpointPort is one port of an EndpointSlice.
type EndpointPort struct {
	Name     *string `json:"name,omitempty"`
	Protocol *string `json:"protocol,omitempty"`
	Port     *int32  `json:"port,omitempty"`
}

// EndpointSliceList is a list of EndpointSlices.
type EndpointSliceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []EndpointSlice `json:"items"`
}

// addToScheme registers the types as discovery.k8s.io/v1's, with the
// meta types (watch events, options) of the group version.
func addToScheme(scheme *runtime.Scheme) {
	scheme.AddKnownTypes(groupVersion, &EndpointSlice{}, &EndpointSliceList{})
	metav1.AddToGroupVersion(scheme, groupVersion)
}

func ptrCopy[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// DeepCopyObject implements runtime.Object.
func (s *EndpointSlice) DeepCopyObject() runtime.Object { return s.deepCopy() }

func (s *EndpointSlice) deepCopy() *EndpointSlice {
	if s == nil {
		return nil
	}
	out := &EndpointSlice{TypeMeta: s.TypeMeta, AddressType: s.AddressType}
	s.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	if s.Endpoints != nil {
		out.Endpoints = make([]Endpoint, len(s.Endpoints))
		for i, e := range s.Endpoints {
			out.Endpoints[i] = Endpoint{
				Addresses: append([]string(nil), e.Addresses...),
				Conditions: EndpointConditions{
					Ready:       ptrCopy(e.Conditions.Ready),
					Serving:     ptrCopy(e.Conditions.Serving),
					Terminating: ptrCopy(e.Conditions.Terminating),
				},
				TargetRef: ptrCopy(e.TargetRef),
			}
		}
	}
	if s.Ports != nil {
		out.Ports = make([]EndpointPort, len(s.Ports))
		for i, p := range s.Ports {
			out.Ports[i] = EndpointPort{Name: ptrCopy(p.Name), Protocol: ptrCopy(p.Protocol), Port: ptrCopy(p.Port)}
		}
	}
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *EndpointSliceList) DeepCopyObject() runtime.Object {
	if l == nil {
		return nil
	}
	out := &EndpointSliceList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]EndpointSlice, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].deepCopy()
		}
	}
	return out
}
