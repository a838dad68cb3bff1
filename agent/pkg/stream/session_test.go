package stream

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// script is a ReportService that records what it receives and answers the
// n-th message of each stream as told. The real aggregator is exercised in
// the e2e tests; this one produces the edge cases on demand.
type script struct {
	pb.UnimplementedReportServiceServer
	got     chan string // "stream:kind:seq"
	streams int
	answer  func(stream, n int, m *pb.AgentMessage) (*pb.AggregatorMessage, error)
}

func (s *script) Report(st pb.ReportService_ReportServer) error {
	s.streams++
	id := s.streams
	for n := 1; ; n++ {
		m, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		kind := "update"
		if m.GetSnapshot() != nil {
			kind = "snapshot"
		}
		s.got <- string(rune('0'+id)) + ":" + kind
		reply, err := s.answer(id, n, m)
		if err != nil {
			return err
		}
		if err := st.Send(reply); err != nil {
			return err
		}
	}
}

func ack(m *pb.AgentMessage, resync bool) *pb.AggregatorMessage {
	return &pb.AggregatorMessage{Body: &pb.AggregatorMessage_Ack{Ack: &pb.Ack{Sequence: m.Sequence, Resync: resync}}}
}

func TestSessionResyncAndReconnect(t *testing.T) {
	srv := &script{got: make(chan string, 100)}
	srv.answer = func(stream, n int, m *pb.AgentMessage) (*pb.AggregatorMessage, error) {
		switch {
		case stream == 1 && n == 2: // the first update: "I lost your state"
			return ack(m, true), nil
		case stream == 1 && n == 4: // a refused report ends the stream
			return nil, status.Error(codes.InvalidArgument, "image 3: unknown status")
		}
		return ack(m, false), nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterReportServiceServer(gs, srv)
	go gs.Serve(ln)
	defer gs.Stop()

	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := New(conn, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c.MinBackoff, c.MaxBackoff = 10*time.Millisecond, 20*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)

	snap := func(n int) *pb.NodeSnapshot {
		s := &pb.NodeSnapshot{Node: &pb.Node{Name: "n1"}}
		for i := 0; i < n; i++ {
			s.Images = append(s.Images, &pb.ImageReport{Image: string(rune('a' + i)), Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE})
		}
		return s
	}
	want := []string{"1:snapshot", "1:update", "1:snapshot", "1:update", "2:snapshot"}
	for i, w := range want {
		if i < 4 {
			c.Publish(snap(i + 1))
		}
		select {
		case got := <-srv.got:
			if got != w {
				t.Fatalf("message %d = %s, want %s", i+1, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("message %d (%s) never arrived", i+1, w)
		}
	}
}
