package discovery

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// API lists and watches the EndpointSlices labelled labelSelector in
// namespace: what a resolver reads. NewAPI makes one on the Kubernetes
// API; a test can make one on any client (a fake clientset).
type API func(namespace, labelSelector string) cache.ListerWatcher

// NewAPI returns the API of the Kubernetes API server that cfg
// configures: a REST client of discovery.k8s.io/v1 that knows only the
// package's own EndpointSlice types (slices.go), rather than the clientset
// of every API group (whose types and informers are most of client-go's
// weight in the binary). It asks for JSON, as the clientset does
// by default.
func NewAPI(cfg *rest.Config) (API, error) {
	scheme := runtime.NewScheme()
	addToScheme(scheme)
	c := *cfg
	c.GroupVersion = &groupVersion
	c.APIPath = "/apis"
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	// The types decode from JSON only (not protobuf or CBOR).
	c.ContentType, c.AcceptContentTypes = "application/json", "application/json"
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	client, err := rest.RESTClientFor(&c)
	if err != nil {
		return nil, fmt.Errorf("EndpointSlice client of %s: %w", cfg.Host, err)
	}
	return func(namespace, labelSelector string) cache.ListerWatcher {
		return &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.LabelSelector = labelSelector
				return client.Get().Namespace(namespace).Resource("endpointslices").
					VersionedParams(&o, metav1.ParameterCodec).Do(ctx).Get()
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.Watch = true
				o.LabelSelector = labelSelector
				return client.Get().Namespace(namespace).Resource("endpointslices").
					VersionedParams(&o, metav1.ParameterCodec).Watch(ctx)
			},
		}
	}, nil
}
