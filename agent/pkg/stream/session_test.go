package stream

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pullwatch/pullwatch/agent/pkg/stream/streamtest"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func TestSessionResyncAndReconnect(t *testing.T) {
	srv := streamtest.NewServer(100)
	srv.Answer = func(stream, n int, m *pb.AgentMessage) (*pb.AggregatorMessage, error) {
		switch {
		case stream == 1 && n == 2: // the first update: "I lost your state"
			return streamtest.Ack(m, true), nil
		case stream == 1 && n == 4: // a refused report ends the stream
			return nil, status.Error(codes.InvalidArgument, "image 3: unknown status")
		}
		return streamtest.Ack(m, false), nil
	}
	conn := streamtest.Start(t, srv)
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
		case m := <-srv.Got:
			if got := string(rune('0'+m.Stream)) + ":" + m.Kind(); got != w {
				t.Fatalf("message %d = %s, want %s", i+1, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("message %d (%s) never arrived", i+1, w)
		}
	}
}
