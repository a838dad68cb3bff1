package stream

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pullwatch/pullwatch/agent/pkg/stream/streamtest"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// replica serves a streamtest.Server on addr ("" for a free port) and
// returns its address and a stop function.
func replica(t *testing.T, srv *streamtest.Server, addr string) (string, func()) {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port of a stopped replica may take a moment to free
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterReportServiceServer(gs, srv)
	served := make(chan struct{})
	go func() { _ = gs.Serve(ln); close(served) }()
	stop := func() { gs.Stop(); <-served }
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func expect(t *testing.T, srv *streamtest.Server, what string, want func(streamtest.Message) bool) streamtest.Message {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-srv.Got:
			if want(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s within 10s", what)
		}
	}
}

func isSnapshot(m streamtest.Message) bool { return m.Kind() == "snapshot" }

func TestReplicasStreamToEveryAddress(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the replicas' own cleanups
	a, b := streamtest.NewServer(100), streamtest.NewServer(100)
	addrA, stopA := replica(t, a, "")
	addrB, _ := replica(t, b, "")

	r := NewReplicas(func(addr string) (*grpc.ClientConn, error) {
		return grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.Configure = func(c *Client) { c.MinBackoff, c.MaxBackoff = 20*time.Millisecond, 100*time.Millisecond }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	snap := &pb.NodeSnapshot{Node: &pb.Node{Name: "n1"}, Images: []*pb.ImageReport{{Image: "a:1", Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE}}}
	r.Publish(snap) // before any address: kept for the streams to come
	r.SetAddresses([]string{addrA, addrB})
	expect(t, a, "snapshot at A", isSnapshot)
	expect(t, b, "snapshot at B", isSnapshot)
	waitUntil(t, "both connected", func() bool { e := r.Endpoints(); return e[addrA] && e[addrB] })

	// A goes away: B keeps its stream (the next report reaches it as an
	// update); A, back on the same address, gets the latest snapshot.
	stopA()
	waitUntil(t, "A disconnected", func() bool { return !r.Endpoints()[addrA] })
	r.Publish(snap)
	expect(t, b, "update at B while A is down", func(m streamtest.Message) bool { return m.Stream == 1 && m.Kind() == "update" })
	replica(t, a, addrA)
	expect(t, a, "snapshot at A after its restart", func(m streamtest.Message) bool { return m.Stream == 2 && isSnapshot(m) })
	if !r.Connected() {
		t.Error("Connected is false with both replicas up")
	}

	// A leaves the EndpointSlice: its stream ends.
	r.SetAddresses([]string{addrB})
	waitUntil(t, "only B left", func() bool { e := r.Endpoints(); _, hasA := e[addrA]; return !hasA && len(e) == 1 })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
