package authn

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
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

// revocable is an Authenticator whose tokens can be revoked (their pod
// deleted) or its API made unavailable.
type revocable struct {
	mu      sync.Mutex
	ids     map[string]Identity
	down    bool
	reviews int
}

func (r *revocable) Verify(_ context.Context, token string) (Identity, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reviews++
	if r.down {
		return Identity{}, unavailable(errors.New("API down"))
	}
	if id, ok := r.ids[token]; ok {
		return id, nil
	}
	return Identity{}, refuse(ReasonInvalidToken, "no")
}

func (r *revocable) set(f func(*revocable)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

// An open stream is verified again every reverify interval: once its pod
// is gone (the API no longer accepts the token) the stream ends, even
// though the token has not expired. The API being unavailable keeps it.
func TestStreamReverified(t *testing.T) {
	defer goleak.VerifyNone(t)
	now := time.Unix(1_800_000_000, 0)
	clock := atomic.Pointer[time.Time]{}
	clock.Store(&now)
	long := jwt(t, map[string]any{"exp": now.Add(time.Hour).Unix()})
	auth := &revocable{ids: map[string]Identity{long: {Node: "node-a", ServiceAccount: "pullwatch/pullwatch-agent", Verified: true}}}
	log, _ := logtest.New()
	g := &guard{auth: auth, refusals: NewRefusals(log), now: func() time.Time { return *clock.Load() }, reverify: 5 * time.Minute}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(g.serverOptions()...)
	pullwatchv1.RegisterReportServiceServer(srv, &acker{})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(plainBearer(long)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := pullwatchv1.NewReportServiceClient(conn).Report(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(seq uint64) error {
		msg := &pullwatchv1.AgentMessage{Sequence: seq, Body: &pullwatchv1.AgentMessage_Update{Update: &pullwatchv1.NodeUpdate{NodeName: "node-a"}}}
		if err := st.Send(msg); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_, err := st.Recv()
		return err
	}
	advance := func(d time.Duration) {
		next := clock.Load().Add(d)
		clock.Store(&next)
	}
	if err := send(1); err != nil {
		t.Fatal(err)
	}
	// Within the interval: no review.
	advance(4 * time.Minute)
	if err := send(2); err != nil {
		t.Fatal(err)
	}
	// The API is down when the interval is up: the stream stays.
	auth.set(func(r *revocable) { r.down = true })
	advance(2 * time.Minute)
	if err := send(3); err != nil {
		t.Fatalf("API unavailable at re-verification: %v, want the stream kept", err)
	}
	// The pod is deleted: the next re-verification ends the stream.
	auth.set(func(r *revocable) { r.down = false; delete(r.ids, long) })
	advance(time.Minute)
	if err := send(4); status.Code(err) != codes.Unauthenticated {
		t.Errorf("after the pod was deleted: %v, want Unauthenticated", err)
	}
}
