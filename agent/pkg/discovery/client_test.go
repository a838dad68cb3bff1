package discovery

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestGRPCClient dials through the resolver as the agent does (with the
// default pick_first balancer): calls reach the first ready endpoint, move
// when it stops being ready, fail with the reason when none is, and the
// resolver's goroutines end with the client.
func TestGRPCClient(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	var ports []int32
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go func() { _ = srv.Serve(ln) }()
		defer srv.Stop()
		ports = append(ports, int32(ln.Addr().(*net.TCPAddr).Port))
	}
	// One slice, ports differing per endpoint: two slices.
	a := slice("a", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("grpc", ports[0])}, ready("127.0.0.1"))
	b := slice("b", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("grpc", ports[1])}, ready("127.0.0.1"))
	cs := fake.NewClientset(a, b)
	addrs, _ := readyAddresses(owns([]*discoveryv1.EndpointSlice{a, b}), "grpc")
	first, second := addrs[0], addrs[1]
	firstSlice := a
	if !strings.HasSuffix(first, ":"+strconv.Itoa(int(ports[0]))) {
		firstSlice = b
	}

	conn, err := grpc.NewClient("kubernetes:///svc.ns:grpc",
		grpc.WithResolvers(NewBuilder(fakeAPI(cs), slog.New(slog.NewTextHandler(io.Discard, nil)))),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	until := func(what string, ok func(addr string, err error) bool) {
		t.Helper()
		var p peer.Peer
		var err error
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err = hc.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
			cancel()
			addr := ""
			if err == nil {
				addr = p.Addr.String()
			}
			if ok(addr, err) {
				return
			}
		}
		t.Fatalf("%s: not within 10s; last error %v", what, err)
	}

	until("calls reach the first address", func(addr string, err error) bool { return err == nil && addr == first })
	firstSlice.Endpoints[0].Conditions.Ready = new(bool)
	if _, err := cs.DiscoveryV1().EndpointSlices("ns").Update(ctx, firstSlice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	until("calls move to the other", func(addr string, err error) bool { return err == nil && addr == second })
	for _, s := range []*discoveryv1.EndpointSlice{a, b} {
		if s != firstSlice {
			if err := cs.DiscoveryV1().EndpointSlices("ns").Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	until("calls fail and say why", func(_ string, err error) bool {
		return status.Code(err) == codes.Unavailable &&
			strings.Contains(err.Error(), "no ready aggregator endpoints in svc.ns: its one endpoint is not ready")
	})
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
}
