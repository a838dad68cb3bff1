package credentials

import (
	"context"
	"encoding/base64"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// fakeLender stands in for the aggregator's Credentials in these unit
// tests (e2e/credentials runs the real one against a real kube-apiserver).
type fakeLender struct {
	mu       sync.Mutex
	requests []*pb.CredentialsRequest
	resp     *pb.CredentialsResponse
	err      error
}

func (f *fakeLender) Credentials(_ context.Context, in *pb.CredentialsRequest, _ ...grpc.CallOption) (*pb.CredentialsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, proto.Clone(in).(*pb.CredentialsRequest))
	if f.err != nil {
		return nil, f.err
	}
	return proto.Clone(f.resp).(*pb.CredentialsResponse), nil
}

func (f *fakeLender) asked() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

func users(creds []Credential) []string {
	var out []string
	for _, c := range creds {
		out = append(out, c.Username)
	}
	return out
}

func newTestPullSecrets(t *testing.T, f *fakeLender, now *time.Time) *PullSecrets {
	t.Helper()
	log, _ := testLogger()
	ps, err := NewPullSecrets(PullSecretsOptions{NodeName: "node-a", Lender: f, Log: log, Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func TestPullSecretsAsksTheAggregator(t *testing.T) {
	f := &fakeLender{resp: &pb.CredentialsResponse{
		Credentials: []*pb.LentCredential{{Username: "legacy", Password: "l", Secret: "shop/legacy"}, {Username: "host", Password: "h", Secret: "shop/host-wide"}},
		CacheFor:    durationpb.New(time.Minute),
	}}
	now := time.Unix(1000, 0)
	ps := newTestPullSecrets(t, f, &now)
	ctx := context.Background()
	ref := mustRef(t, "registry.example/team/app:v1")

	if creds, err := ps.Lookup(ctx, ref, nil); err != nil || creds != nil || f.asked() != 0 {
		t.Fatalf("no pods: %v %v, asked %d times; want nothing asked", creds, err, f.asked())
	}
	creds, err := ps.Lookup(ctx, ref, []Pod{{"shop", "web", "uid-web"}, {"shop", "api", "uid-api"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := users(creds); !slices.Equal(got, []string{"legacy", "host"}) {
		t.Errorf("credentials %v, want the aggregator's, in its order", got)
	}
	for _, c := range creds {
		if c.Source != SourcePullSecret {
			t.Errorf("source %q", c.Source)
		}
	}
	want := &pb.CredentialsRequest{Image: "registry.example/team/app", Node: "node-a", Pods: []*pb.PodRef{
		{Namespace: "shop", Name: "web", Uid: "uid-web"}, {Namespace: "shop", Name: "api", Uid: "uid-api"}}}
	if !proto.Equal(f.requests[0], want) {
		t.Errorf("request %v, want %v", f.requests[0], want)
	}
}

func TestPullSecretsCacheBoundedInTime(t *testing.T) {
	f := &fakeLender{resp: &pb.CredentialsResponse{
		Credentials: []*pb.LentCredential{{Username: "u", Password: "p"}},
		CacheFor:    durationpb.New(time.Hour), // more than the agent keeps
	}}
	now := time.Unix(1000, 0)
	ps := newTestPullSecrets(t, f, &now)
	ctx := context.Background()
	ref := mustRef(t, "registry.example/app:v1")
	pods := []Pod{{"shop", "web", "uid-web"}}
	for range 3 {
		if _, err := ps.Lookup(ctx, ref, pods); err != nil {
			t.Fatal(err)
		}
	}
	if f.asked() != 1 {
		t.Errorf("asked %d times within the cache time, want 1", f.asked())
	}
	if _, err := ps.Lookup(ctx, ref, []Pod{{"shop", "web", "uid-new"}}); err != nil || f.asked() != 2 {
		t.Errorf("another pod UID is another question: asked %d times (%v)", f.asked(), err)
	}
	now = now.Add(time.Minute)
	if _, err := ps.Lookup(ctx, ref, pods); err != nil || f.asked() != 3 {
		t.Errorf("after MaxCache (1m) the answer is not kept: asked %d times (%v), want 3", f.asked(), err)
	}
	if len(ps.answers) > 2 {
		t.Errorf("%d answers kept after the sweep, want the expired ones dropped", len(ps.answers))
	}
}

func TestPullSecretsRefusedOrUnavailable(t *testing.T) {
	ctx := context.Background()
	ref := mustRef(t, "registry.example/app:v1")
	pods := []Pod{{"shop", "web", "uid-web"}}

	t.Run("refused: said once, not asked again for a while", func(t *testing.T) {
		f := &fakeLender{err: status.Error(codes.PermissionDenied, "credential lending needs a verified agent token")}
		now := time.Unix(1000, 0)
		log, logs := testLogger()
		ps, err := NewPullSecrets(PullSecretsOptions{NodeName: "node-a", Lender: f, Log: log, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := ps.Lookup(ctx, ref, pods); err == nil || !strings.Contains(err.Error(), "refused to lend") {
				t.Errorf("err %v, want the refusal", err)
			}
			now = now.Add(20 * time.Second)
		}
		if f.asked() != 1 {
			t.Errorf("asked %d times in 40s, want 1", f.asked())
		}
		if n := strings.Count(logs.String(), "lends no pull secrets"); n != 1 {
			t.Errorf("refusal logged %d times, want once:\n%s", n, logs)
		}
	})
	t.Run("unavailable: asked again soon", func(t *testing.T) {
		f := &fakeLender{err: status.Error(codes.Unavailable, "connection refused")}
		now := time.Unix(1000, 0)
		ps := newTestPullSecrets(t, f, &now)
		for range 2 {
			if _, err := ps.Lookup(ctx, ref, pods); err == nil {
				t.Error("no error")
			}
			now = now.Add(errorTTL)
		}
		if f.asked() != 2 {
			t.Errorf("asked %d times, want again after %s", f.asked(), errorTTL)
		}
	})
}
