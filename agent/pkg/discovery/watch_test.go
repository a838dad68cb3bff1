package discovery

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/goleak"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestWatchHandsOverEveryChange(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	grpcPort := []discoveryv1.EndpointPort{port("grpc", 9400)}
	cs := fake.NewClientset(slice("a", discoveryv1.AddressTypeIPv4, grpcPort, ready("10.0.0.1"), ready("10.0.0.2")))
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, fakeAPI(cs), Target{Service: "svc", Namespace: "ns", Port: "grpc"}, slog.New(slog.NewTextHandler(io.Discard, nil)),
			func(addrs []string) { rec.events <- "addrs " + strings.Join(addrs, ",") })
	}()
	rec.next(t, "addrs 10.0.0.1:9400,10.0.0.2:9400")
	a := slice("a", discoveryv1.AddressTypeIPv4, grpcPort, notReady("10.0.0.1"), notReady("10.0.0.2"))
	if _, err := cs.DiscoveryV1().EndpointSlices("ns").Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "addrs ") // none ready: an empty list, no error call
	rec.quiet(t)
	cancel()
	<-done
}
