// Package streamtest is an in-process ReportService for tests of the
// agent's report stream: it records every message agents send and answers
// each as told (by default, an acknowledgement). The real aggregator is
// exercised in the e2e tests; this one produces the edge cases on demand.
package streamtest

import (
	"io"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Message is one message an agent sent: the n-th (from 1) of the stream-th
// stream (from 1).
type Message struct {
	Stream, N int
	Msg       *pb.AgentMessage
}

// Kind is "snapshot" or "update".
func (m Message) Kind() string {
	if m.Msg.GetSnapshot() != nil {
		return "snapshot"
	}
	return "update"
}

// Server is a ReportService that sends every message it receives to Got
// and replies with Answer's message, or ends the stream with its error.
type Server struct {
	pb.UnimplementedReportServiceServer
	// Got receives every message; size its buffer for the test.
	Got chan Message
	// Answer replies to a message. Nil: acknowledge every message.
	Answer func(stream, n int, m *pb.AgentMessage) (*pb.AggregatorMessage, error)

	mu      sync.Mutex
	streams int
}

// NewServer returns a Server that acknowledges every message and buffers
// up to buffer of them in Got.
func NewServer(buffer int) *Server { return &Server{Got: make(chan Message, buffer)} }

// Ack acknowledges m, asking for a snapshot when resync is set.
func Ack(m *pb.AgentMessage, resync bool) *pb.AggregatorMessage {
	return &pb.AggregatorMessage{Body: &pb.AggregatorMessage_Ack{Ack: &pb.Ack{Sequence: m.Sequence, Resync: resync}}}
}

// Report implements pb.ReportServiceServer.
func (s *Server) Report(st pb.ReportService_ReportServer) error {
	s.mu.Lock()
	s.streams++
	id := s.streams
	s.mu.Unlock()
	for n := 1; ; n++ {
		m, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		s.Got <- Message{Stream: id, N: n, Msg: m}
		reply := Ack(m, false)
		if s.Answer != nil {
			if reply, err = s.Answer(id, n, m); err != nil {
				return err
			}
		}
		if err := st.Send(reply); err != nil {
			return err
		}
	}
}

// Start serves s on a loopback port and returns a client connection to
// it; both are stopped when the test ends.
func Start(t testing.TB, s *Server) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterReportServiceServer(gs, s)
	served := make(chan struct{})
	go func() { _ = gs.Serve(ln); close(served) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		gs.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		gs.Stop()
		<-served
	})
	return conn
}
