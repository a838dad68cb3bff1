package authn

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/pkg/logging/logtest"
)

// tokens is an Authenticator of fixed tokens.
type tokens map[string]Identity

func (t tokens) Verify(_ context.Context, token string) (Identity, error) {
	if id, ok := t[token]; ok {
		return id, nil
	}
	return Identity{}, refuse(ReasonInvalidToken, "no")
}

// acker acks every message and remembers the identity it saw.
type acker struct {
	pullwatchv1.UnimplementedReportServiceServer
	seen atomic.Value
}

func (a *acker) Report(rs pullwatchv1.ReportService_ReportServer) error {
	if id, ok := IdentityFrom(rs.Context()); ok {
		a.seen.Store(id)
	}
	for {
		m, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := rs.Send(&pullwatchv1.AggregatorMessage{Body: &pullwatchv1.AggregatorMessage_Ack{Ack: &pullwatchv1.Ack{Sequence: m.GetSequence()}}}); err != nil {
			return err
		}
	}
}

type plainBearer string

func (b plainBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (plainBearer) RequireTransportSecurity() bool { return false }

func TestStreamInterceptor(t *testing.T) {
	defer goleak.VerifyNone(t)
	now := time.Unix(1_800_000_000, 0)
	clock := atomic.Pointer[time.Time]{}
	clock.Store(&now)
	short := jwt(t, map[string]any{"exp": now.Add(time.Minute).Unix()})
	log, _ := logtest.New()
	g := &guard{
		auth: tokens{
			"node-a": {Node: "node-a", ServiceAccount: "pullwatch/pullwatch-agent", Verified: true},
			short:    {Node: "node-a", ServiceAccount: "pullwatch/pullwatch-agent", Verified: true},
		},
		refusals: NewRefusals(log),
		now:      func() time.Time { return *clock.Load() },
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(g.serverOptions()...)
	a := &acker{}
	pullwatchv1.RegisterReportServiceServer(srv, a)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	open := func(token string) (pullwatchv1.ReportService_ReportClient, func()) {
		t.Helper()
		conn, err := grpc.NewClient("passthrough:///bufconn",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(plainBearer(token)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := pullwatchv1.NewReportServiceClient(conn).Report(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st, func() { cancel(); conn.Close() }
	}
	send := func(st pullwatchv1.ReportService_ReportClient, seq uint64, node string) error {
		msg := &pullwatchv1.AgentMessage{Sequence: seq, Body: &pullwatchv1.AgentMessage_Update{Update: &pullwatchv1.NodeUpdate{NodeName: node}}}
		if err := st.Send(msg); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_, err := st.Recv()
		return err
	}

	st, done := open("node-a")
	if err := send(st, 1, "node-a"); err != nil {
		t.Fatalf("own node: %v", err)
	}
	if id, _ := a.seen.Load().(Identity); id.Node != "node-a" || !id.Verified {
		t.Errorf("handler saw identity %+v", id)
	}
	if err := send(st, 2, "node-b"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("other node: %v, want PermissionDenied", err)
	}
	done()

	st, done = open("nobody")
	if err := send(st, 1, "node-a"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("unknown token: %v, want Unauthenticated", err)
	}
	done()

	st, done = open(short)
	if err := send(st, 1, "node-a"); err != nil {
		t.Fatalf("short-lived token: %v", err)
	}
	later := now.Add(time.Minute)
	clock.Store(&later)
	if err := send(st, 2, "node-a"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("after the token expired: %v, want Unauthenticated", err)
	}
	done()
}
