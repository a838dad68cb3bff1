package authn

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/peer"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// stuckReviews is an API server that never answers until released (or the
// caller gives up).
type stuckReviews struct {
	release chan struct{}
	mu      sync.Mutex
	calls   int
	started chan struct{}
}

func newStuckReviews() *stuckReviews {
	return &stuckReviews{release: make(chan struct{}), started: make(chan struct{}, 100)}
}

func (s *stuckReviews) Create(ctx context.Context, r *authenticationv1.TokenReview, _ metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	s.started <- struct{}{}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.release:
	}
	out := r.DeepCopy()
	out.Status = ok(agentUser, nodeExtra("node-a"))
	return out, nil
}

func from(addr string) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(addr), Port: 40000}})
}

// A review the API server does not answer ends at Verify's deadline, as
// review_failed (Unavailable: the agent retries).
func TestVerifyHasADeadline(t *testing.T) {
	defer goleak.VerifyNone(t)
	api := newStuckReviews()
	v, err := NewVerifier(VerifierConfig{Reviews: api, ServiceAccount: "pullwatch/pullwatch-agent", Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = v.Verify(from("10.0.0.1"), "junk-1")
	if reasonOf(err) != ReasonReviewFailed {
		t.Errorf("Verify = %v, want %s", err, ReasonReviewFailed)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Verify took %v with a 50ms deadline", d)
	}
}

// Reviews in flight are capped: beyond the cap Verify fails at once
// instead of queueing every caller behind junk.
func TestVerifyCapsReviewsInFlight(t *testing.T) {
	defer goleak.VerifyNone(t)
	api := newStuckReviews()
	v, err := NewVerifier(VerifierConfig{Reviews: api, ServiceAccount: "pullwatch/pullwatch-agent", Timeout: time.Minute, MaxInFlight: 2})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i, src := range []string{"10.0.0.1", "10.0.0.2"} {
		wg.Go(func() { _, _ = v.Verify(from(src), "junk-"+string(rune('a'+i))) })
		<-api.started
	}
	start := time.Now()
	_, err = v.Verify(from("10.0.0.3"), "real-token")
	if reasonOf(err) != ReasonReviewBusy {
		t.Errorf("third review: %v, want %s", err, ReasonReviewBusy)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the refusal took %v; want it at once", d)
	}
	close(api.release)
	wg.Wait()
	// Once there is room, the next review goes through.
	if _, err := v.Verify(from("10.0.0.3"), "real-token"); err != nil {
		t.Errorf("after the cap freed: %v", err)
	}
}

// One source address gets only so many reviews: a pod flooding junk
// tokens does not use up the reviews of everyone else, and a token it
// already had verified still works.
func TestVerifyLimitsReviewsPerSource(t *testing.T) {
	f := &fakeReviews{answers: map[string]authenticationv1.TokenReviewStatus{"good": ok(agentUser, nodeExtra("node-a"))}}
	v, err := NewVerifier(VerifierConfig{Reviews: f, ServiceAccount: "pullwatch/pullwatch-agent", PerSourceBurst: 3, PerSourceRate: 0.001})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(from("10.0.0.9"), "good"); err != nil {
		t.Fatal(err)
	}
	throttled := 0
	for i := range 50 {
		if _, err := v.Verify(from("10.0.0.9"), "junk-"+string(rune('a'+i))); reasonOf(err) == ReasonReviewThrottled {
			throttled++
		}
	}
	if f.calls > 3 || throttled != 48 {
		t.Errorf("%d reviews, %d throttled, from one source with a burst of 3; want 3 and 48", f.calls, throttled)
	}
	if _, err := v.Verify(from("10.0.0.9"), "good"); err != nil {
		t.Errorf("a verified token from the flooding source: %v", err)
	}
	if _, err := v.Verify(from("10.0.0.10"), "junk-other"); reasonOf(err) == ReasonReviewThrottled {
		t.Errorf("another source throttled: %v", err)
	}
}

// A token bound to a node but to no pod (kubectl create token
// --bound-object-kind Node) is refused: a deleted pod must take its
// token with it.
func TestVerifyRequiresPodExtras(t *testing.T) {
	f := &fakeReviews{answers: map[string]authenticationv1.TokenReviewStatus{
		"node-bound": ok(agentUser, map[string]authenticationv1.ExtraValue{ExtraNodeName: {"node-a"}}),
		"no-uid":     ok(agentUser, map[string]authenticationv1.ExtraValue{ExtraNodeName: {"node-a"}, ExtraPodName: {"agent-x"}}),
		"pod-bound":  ok(agentUser, nodeExtra("node-a")),
	}}
	v, err := NewVerifier(VerifierConfig{Reviews: f, ServiceAccount: "pullwatch/pullwatch-agent"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"node-bound", "no-uid"} {
		if _, err := v.Verify(context.Background(), tok); reasonOf(err) != ReasonNotPodBound {
			t.Errorf("%s: %v, want %s", tok, err, ReasonNotPodBound)
		}
	}
	if id, err := v.Verify(context.Background(), "pod-bound"); err != nil || id.Node != "node-a" {
		t.Errorf("pod-bound: %v %v", id, err)
	}
}
