package authn

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/pkg/logging/logtest"
)

const agentUser = "system:serviceaccount:pullwatch:pullwatch-agent"

// fakeReviews answers TokenReviews from a table; a fake is right here:
// the edge cases (API errors, old API servers, clocks) cannot be made on
// a real API server. e2e/authn checks the real one.
type fakeReviews struct {
	answers map[string]authenticationv1.TokenReviewStatus
	err     error
	calls   int
}

func (f *fakeReviews) Create(_ context.Context, r *authenticationv1.TokenReview, _ metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	out := r.DeepCopy()
	out.Status = f.answers[r.Spec.Token]
	return out, nil
}

type fakePods map[string]*corev1.Pod

func (f fakePods) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	if p, ok := f[ns+"/"+name]; ok {
		return p, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
}

// jwt makes an unsigned token with the claims (the fake API server is
// what "verifies" it).
func jwt(t *testing.T, claims map[string]any) string {
	t.Helper()
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString(b) + ".c2ln"
}

func ok(user string, extra map[string]authenticationv1.ExtraValue) authenticationv1.TokenReviewStatus {
	return authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{Audience},
		User: authenticationv1.UserInfo{Username: user, Extra: extra}}
}

func nodeExtra(node string) map[string]authenticationv1.ExtraValue {
	return map[string]authenticationv1.ExtraValue{ExtraNodeName: {node}, ExtraPodName: {"agent-x"}, ExtraPodUID: {"uid-x"}}
}

func newTestVerifier(t *testing.T, f *fakeReviews, pods Pods, clk *clocktesting.FakeClock) *Verifier {
	t.Helper()
	v, err := NewVerifier(VerifierConfig{Reviews: f, Pods: pods, ServiceAccount: "pullwatch/pullwatch-agent", Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func reasonOf(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reason
	}
	return ""
}

func TestVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	exp := now.Add(time.Hour).Unix()
	pods := fakePods{
		"pullwatch/agent-old": {ObjectMeta: metav1.ObjectMeta{Name: "agent-old", UID: "uid-old"}, Spec: corev1.PodSpec{NodeName: "node-o"}},
		"pullwatch/agent-p":   {ObjectMeta: metav1.ObjectMeta{Name: "agent-p", UID: "uid-p"}, Spec: corev1.PodSpec{NodeName: "node-p"}},
		"pullwatch/pending":   {ObjectMeta: metav1.ObjectMeta{Name: "pending", UID: "uid-q"}},
	}
	podExtra := func(name, uid string) map[string]authenticationv1.ExtraValue {
		return map[string]authenticationv1.ExtraValue{ExtraPodName: {name}, ExtraPodUID: {uid}}
	}
	tok := map[string]string{
		"good":      jwt(t, map[string]any{"exp": exp, "aud": []string{Audience}}),
		"podOnly":   jwt(t, map[string]any{"exp": exp, "n": 1}),
		"stalePod":  jwt(t, map[string]any{"exp": exp, "n": 2}),
		"gonePod":   jwt(t, map[string]any{"exp": exp, "n": 3}),
		"pending":   jwt(t, map[string]any{"exp": exp, "n": 4}),
		"unbound":   jwt(t, map[string]any{"exp": exp, "n": 5}),
		"otherSA":   jwt(t, map[string]any{"exp": exp, "n": 6}),
		"noAud":     jwt(t, map[string]any{"exp": exp, "n": 7}),
		"expired":   jwt(t, map[string]any{"exp": now.Add(-time.Minute).Unix(), "aud": Audience}),
		"otherAud":  jwt(t, map[string]any{"exp": exp, "aud": "https://kubernetes.default.svc"}),
		"rejected":  jwt(t, map[string]any{"exp": exp, "aud": []string{Audience}}) + "x",
		"not a jwt": "abc",
	}
	f := &fakeReviews{answers: map[string]authenticationv1.TokenReviewStatus{
		tok["good"]:     ok(agentUser, nodeExtra("node-1")),
		tok["podOnly"]:  ok(agentUser, podExtra("agent-p", "uid-p")),
		tok["stalePod"]: ok(agentUser, podExtra("agent-old", "uid-new")),
		tok["gonePod"]:  ok(agentUser, podExtra("agent-gone", "uid-g")),
		tok["pending"]:  ok(agentUser, podExtra("pending", "uid-q")),
		tok["unbound"]:  ok(agentUser, nil),
		tok["otherSA"]:  ok("system:serviceaccount:pullwatch:other", nodeExtra("node-1")),
		tok["noAud"]:    {Authenticated: true, User: authenticationv1.UserInfo{Username: agentUser, Extra: nodeExtra("node-1")}},
	}}
	v := newTestVerifier(t, f, pods, clocktesting.NewFakeClock(now))
	for _, tt := range []struct {
		token    string
		wantNode string
		reason   string
		code     codes.Code
	}{
		{"good", "node-1", "", codes.OK},
		{"podOnly", "node-p", "", codes.OK},
		{"stalePod", "", ReasonNotNodeBound, codes.PermissionDenied},
		{"gonePod", "", ReasonNotNodeBound, codes.PermissionDenied},
		{"pending", "", ReasonNotNodeBound, codes.PermissionDenied},
		{"unbound", "", ReasonNotNodeBound, codes.PermissionDenied},
		{"otherSA", "", ReasonWrongServiceAccount, codes.PermissionDenied},
		{"noAud", "", ReasonWrongAudience, codes.Unauthenticated},
		{"expired", "", ReasonExpiredToken, codes.Unauthenticated},
		{"otherAud", "", ReasonWrongAudience, codes.Unauthenticated},
		{"rejected", "", ReasonInvalidToken, codes.Unauthenticated},
		{"not a jwt", "", ReasonInvalidToken, codes.Unauthenticated},
		{"", "", ReasonMissingToken, codes.Unauthenticated},
	} {
		t.Run(tt.token, func(t *testing.T) {
			id, err := v.Verify(context.Background(), tok[tt.token])
			if got := status.Code(err); got != tt.code || reasonOf(err) != tt.reason {
				t.Fatalf("Verify = %v (%s, %q), want %s %q", err, got, reasonOf(err), tt.code, tt.reason)
			}
			if err == nil && (id.Node != tt.wantNode || !id.Verified || id.ServiceAccount != "pullwatch/pullwatch-agent") {
				t.Errorf("identity %+v, want node %s, verified, pullwatch/pullwatch-agent", id, tt.wantNode)
			}
			if err != nil && tok[tt.token] != "" && strings.Contains(err.Error(), tok[tt.token]) {
				t.Errorf("refusal %q repeats the token", err)
			}
		})
	}
}

func TestVerifyCache(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clk := clocktesting.NewFakeClock(now)
	soon := jwt(t, map[string]any{"exp": now.Add(2 * time.Minute).Unix()})
	later := jwt(t, map[string]any{"exp": now.Add(time.Hour).Unix()})
	bad := jwt(t, map[string]any{"exp": now.Add(time.Hour).Unix(), "aud": Audience, "x": 1})
	f := &fakeReviews{answers: map[string]authenticationv1.TokenReviewStatus{
		soon: ok(agentUser, nodeExtra("node-1")), later: ok(agentUser, nodeExtra("node-1")),
	}}
	v := newTestVerifier(t, f, nil, clk)
	ctx := context.Background()
	verify := func(tok string, wantCalls int, what string) {
		t.Helper()
		_, _ = v.Verify(ctx, tok)
		if f.calls != wantCalls {
			t.Fatalf("%s: %d reviews, want %d", what, f.calls, wantCalls)
		}
	}
	verify(soon, 1, "first use")
	verify(soon, 1, "second use (cached)")
	verify(later, 2, "another token")
	clk.Step(2*time.Minute + time.Second)
	verify(soon, 3, "past the token's expiry")
	verify(later, 3, "later token within the 5m bound")
	clk.Step(3 * time.Minute)
	verify(later, 4, "later token past the 5m bound")

	verify(bad, 5, "refused token")
	verify(bad, 5, "refused token again (negative cache)")
	clk.Step(11 * time.Second)
	verify(bad, 6, "refused token after the negative TTL")

	// An API that cannot answer: Unavailable, and not remembered.
	f.err = errors.New("connection refused")
	fresh := jwt(t, map[string]any{"exp": now.Add(time.Hour).Unix(), "n": 9})
	_, err := v.Verify(ctx, fresh)
	if status.Code(err) != codes.Unavailable || reasonOf(err) != ReasonReviewFailed || strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Verify with the API down = %v, want Unavailable review_failed without the API's words", err)
	}
	f.err = nil
	f.answers[fresh] = ok(agentUser, nodeExtra("node-2"))
	if id, err := v.Verify(ctx, fresh); err != nil || id.Node != "node-2" {
		t.Fatalf("Verify once the API is back = %+v, %v", id, err)
	}
}

func TestVerifyCacheIsBounded(t *testing.T) {
	f := &fakeReviews{answers: map[string]authenticationv1.TokenReviewStatus{}}
	v, err := NewVerifier(VerifierConfig{Reviews: f, ServiceAccount: "pullwatch/pullwatch-agent", CacheSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		_, _ = v.Verify(context.Background(), strings.Repeat("t", i+1))
	}
	if n := len(v.cache.Keys()); n > 8 {
		t.Errorf("cache holds %d entries, bound 8", n)
	}
}

func TestNewVerifierRefuses(t *testing.T) {
	for _, sa := range []string{"", "pullwatch", "/x", "x/", "a/b/c"} {
		if _, err := NewVerifier(VerifierConfig{Reviews: &fakeReviews{}, ServiceAccount: sa}); err == nil {
			t.Errorf("NewVerifier(%q) accepted", sa)
		}
	}
}

func TestBearerToken(t *testing.T) {
	for _, tt := range []struct {
		md   metadata.MD
		want string
	}{
		{metadata.Pairs("authorization", "Bearer abc"), "abc"},
		{metadata.Pairs("authorization", "bearer  abc "), "abc"},
		{metadata.Pairs("authorization", "Basic abc"), ""},
		{metadata.Pairs("authorization", "Bearer"), ""},
		{metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"), ""},
		{metadata.MD{}, ""},
	} {
		ctx := metadata.NewIncomingContext(context.Background(), tt.md)
		if got := bearerToken(ctx); got != tt.want {
			t.Errorf("bearerToken(%v) = %q, want %q", tt.md, got, tt.want)
		}
	}
}

func TestCheckNode(t *testing.T) {
	verified := Identity{Node: "node-a", ServiceAccount: "pullwatch/pullwatch-agent", Verified: true}
	if r := CheckNode(verified, "node-a"); r != nil {
		t.Errorf("own node refused: %v", r)
	}
	if r := CheckNode(verified, "node-b"); r == nil || r.Code != codes.PermissionDenied || r.Reason != ReasonNodeMismatch {
		t.Errorf("other node: %v, want PermissionDenied node_mismatch", r)
	}
	if r := CheckNode(Identity{}, "node-b"); r != nil {
		t.Errorf("auth off: %v, want any node", r)
	}
	snap := &pullwatchv1.AgentMessage{Body: &pullwatchv1.AgentMessage_Snapshot{Snapshot: &pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: "n1"}}}}
	upd := &pullwatchv1.AgentMessage{Body: &pullwatchv1.AgentMessage_Update{Update: &pullwatchv1.NodeUpdate{NodeName: "n2"}}}
	if ReportedNode(snap) != "n1" || ReportedNode(upd) != "n2" || ReportedNode(&pullwatchv1.AgentMessage{}) != "" {
		t.Error("ReportedNode")
	}
}

func TestRefusalsLogOncePerSource(t *testing.T) {
	log, buf := logtest.New()
	r := NewRefusals(log)
	ctx := context.Background()
	for range 5 {
		r.Refuse(ctx, "10.0.0.1", refuse(ReasonNodeMismatch, "x"))
	}
	r.Refuse(ctx, "10.0.0.2", refuse(ReasonNodeMismatch, "x"))
	r.Refuse(ctx, "10.0.0.1", unavailable(errors.New("api down")))
	if got := strings.Count(buf.String(), "agent refused"); got != 3 {
		t.Errorf("%d log lines, want 3 (one per source and reason):\n%s", got, buf.String())
	}
	if got := testutil.ToFloat64(r.counter.WithLabelValues(ReasonNodeMismatch)); got != 6 {
		t.Errorf("node_mismatch counted %v, want 6", got)
	}
	if n := testutil.CollectAndCount(r); n != len(Reasons()) {
		t.Errorf("%d series, want one per reason (%d) from the start", n, len(Reasons()))
	}
}
