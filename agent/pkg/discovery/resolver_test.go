package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/resolver"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
)

// recorder is the ClientConn of a resolver under test: it turns each call
// into a line, "addrs A,B" or "error MESSAGE".
type recorder struct {
	resolver.ClientConn // the methods a resolver must not call panic
	events              chan string
}

func newRecorder() *recorder { return &recorder{events: make(chan string, 100)} }

func (r *recorder) UpdateState(s resolver.State) error {
	var addrs []string
	for i, ep := range s.Endpoints {
		if len(ep.Addresses) != 1 || s.Addresses[i] != ep.Addresses[0] {
			r.events <- "bad state: endpoints and addresses differ"
		}
		addrs = append(addrs, ep.Addresses[0].Addr)
	}
	r.events <- "addrs " + strings.Join(addrs, ",")
	return nil
}

func (r *recorder) ReportError(err error) { r.events <- "error " + err.Error() }

// next waits for the next call and checks it.
func (r *recorder) next(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-r.events:
		if got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no call of the ClientConn in 10s, want %q", want)
	}
}

// quiet checks that no call comes for a while.
func (r *recorder) quiet(t *testing.T) {
	t.Helper()
	select {
	case got := <-r.events:
		t.Fatalf("unexpected call %q", got)
	case <-time.After(300 * time.Millisecond):
	}
}

func build(t *testing.T, cs *fake.Clientset, target string, cc resolver.ClientConn) (resolver.Resolver, error) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return NewBuilder(fakeAPI(cs), log).Build(resolver.Target{URL: *u}, cc, resolver.BuildOptions{})
}

func TestResolverFollowsEndpointSlices(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	grpcPort := []discoveryv1.EndpointPort{port("grpc", 9400)}
	other := slice("other", discoveryv1.AddressTypeIPv4, grpcPort, ready("10.9.9.9"))
	other.Labels[discoveryv1.LabelServiceName] = "other"
	cs := fake.NewClientset(slice("a", discoveryv1.AddressTypeIPv4, grpcPort, ready("10.0.0.1")), other)
	slices := cs.DiscoveryV1().EndpointSlices("ns")

	rec := newRecorder()
	r, err := build(t, cs, "kubernetes:///svc.ns:grpc", rec)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rec.next(t, "addrs 10.0.0.1:9400")

	a := slice("a", discoveryv1.AddressTypeIPv4, grpcPort, ready("10.0.0.1"), ready("10.0.0.2"))
	if _, err := slices.Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "addrs 10.0.0.1:9400,10.0.0.2:9400")

	b := slice("b", discoveryv1.AddressTypeIPv6, []discoveryv1.EndpointPort{port("grpc", 9500)}, ready("fd00::1"))
	if _, err := slices.Create(ctx, b, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "addrs 10.0.0.1:9400,10.0.0.2:9400,[fd00::1]:9500")

	// Another Service's slice, and a change that leaves the set as it
	// is: no call.
	other.Endpoints = append(other.Endpoints, ready("10.9.9.8").slice())
	if _, err := slices.Update(ctx, other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	a.Labels["unrelated"] = "change"
	if _, err := slices.Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.quiet(t)

	a = slice("a", discoveryv1.AddressTypeIPv4, grpcPort, notReady("10.0.0.1"), ready("10.0.0.2"))
	if _, err := slices.Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "addrs 10.0.0.2:9400,[fd00::1]:9500")

	if err := slices.Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "addrs 10.0.0.2:9400")

	a = slice("a", discoveryv1.AddressTypeIPv4, grpcPort, notReady("10.0.0.1"), notReady("10.0.0.2"))
	if _, err := slices.Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "addrs ")
	rec.next(t, "error no ready aggregator endpoints in svc.ns: none of its 2 endpoints is ready")

	if err := slices.Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.quiet(t) // still none

	if _, err := slices.Create(ctx, slice("c", discoveryv1.AddressTypeIPv4, grpcPort, ready("10.0.0.3")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "addrs 10.0.0.3:9400")

	r.Close()
	r.Close() // twice is fine
}

func TestResolverEmptyFromTheStart(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cs := fake.NewClientset(slice("a", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{port("metrics", 8080)}, ready("10.0.0.1")))
	rec := newRecorder()
	r, err := build(t, cs, "kubernetes:///svc.ns:grpc", rec)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rec.next(t, "addrs ")
	rec.next(t, `error no ready aggregator endpoints in svc.ns: no TCP port named "grpc" in its EndpointSlices`)
}

func TestResolverReportsListErrors(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cs := fake.NewClientset()
	cs.PrependReactor("list", "endpointslices", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, "", errors.New("RBAC says no"))
	})
	rec := newRecorder()
	r, err := build(t, cs, "kubernetes:///svc.ns:grpc", rec)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() // while the informer backs off
	rec.next(t, `error EndpointSlices of Service ns/svc: failed to list *v1.EndpointSlice: endpointslices.discovery.k8s.io is forbidden: RBAC says no`+
		` (the agent needs list and watch on endpointslices in namespace ns)`)
}

func TestBuildRejectsBadTargets(t *testing.T) {
	for target, want := range map[string]string{
		"kubernetes://svc.ns:9400":   `target "kubernetes://svc.ns:9400": unexpected authority "svc.ns:9400"`,
		"kubernetes:///svc.ns":       `target "kubernetes:///svc.ns": no port in "svc.ns"`,
		"kubernetes:///svc.ns:a_b":   `port "a_b" is neither a number nor a port name`,
		"kubernetes:svc.ns:9400":     "three slashes",
		"kubernetes:///svc.ns:70000": "port 70000: not in 1-65535",
	} {
		r, err := build(t, fake.NewClientset(), target, newRecorder())
		if err == nil {
			r.Close()
			t.Errorf("Build(%q): no error", target)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Build(%q): %v, want %q", target, err, want)
		}
	}
}

// fakeAPI reads EndpointSlices through a fake clientset, as NewAPI does
// through the API server: k8s.io/api's objects turned into the package's
// own through their JSON, as the API server sends it. The fake does not
// stream a watch's initial list (watch-list), and says so, as the
// clientset's own informers do.
func fakeAPI(cs *fake.Clientset) API {
	return func(namespace, labelSelector string) cache.ListerWatcher {
		slices := cs.DiscoveryV1().EndpointSlices(namespace)
		return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.LabelSelector = labelSelector
				l, err := slices.List(ctx, o)
				if err != nil {
					return nil, err
				}
				var out EndpointSliceList
				return &out, viaJSON(l, &out)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.LabelSelector = labelSelector
				w, err := slices.Watch(ctx, o)
				if err != nil {
					return nil, err
				}
				return watch.Filter(w, func(e watch.Event) (watch.Event, bool) {
					if s, ok := e.Object.(*discoveryv1.EndpointSlice); ok {
						e.Object = own(s)
					}
					return e, true
				}), nil
			},
		}, cs)
	}
}

// viaJSON decodes in's JSON into out.
func viaJSON(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// own is s as the package's own EndpointSlice.
func own(s *discoveryv1.EndpointSlice) *EndpointSlice {
	var out EndpointSlice
	if err := viaJSON(s, &out); err != nil {
		panic(err)
	}
	return &out
}

// owns is own of every slice.
func owns(ss []*discoveryv1.EndpointSlice) []*EndpointSlice {
	out := make([]*EndpointSlice, len(ss))
	for i, s := range ss {
		out[i] = own(s)
	}
	return out
}
