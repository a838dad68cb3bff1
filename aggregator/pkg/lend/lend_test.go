package lend

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pullwatch/pullwatch/aggregator/pkg/authn"
	"github.com/pullwatch/pullwatch/aggregator/pkg/ingest"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
	"github.com/pullwatch/pullwatch/pkg/logging/logtest"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const secretPass = "pw-L3ND-7c6b5a"

func pod(ns, name, node string, secrets ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}
	for _, s := range secrets {
		p.Spec.ImagePullSecrets = append(p.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
	}
	return p
}

func dockerSecret(ns, name, key, user, pass string) *corev1.Secret {
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, key, auth))},
	}
}

// lendServer serves a Lender over a real gRPC connection (in memory), with
// an interceptor standing in for authn's: it puts id in every RPC's
// context (none when id is nil).
type lendServer struct {
	client pb.ReportServiceClient
	lender *Lender
	logs   *logtest.Buffer
}

func startLender(t *testing.T, mode string, id *authn.Identity, objs ...runtime.Object) *lendServer {
	t.Helper()
	log, logs := logtest.New()
	l, err := New(fake.NewClientset(objs...), Options{Mode: mode, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.Start(ctx)
	if !l.WaitForSync(ctx) {
		t.Fatal("pods not synced")
	}
	srv := ingest.NewServer(state.New(0), nopObserver{}, log)
	srv.SetLender(l)
	gs := ingest.NewGRPCServer(srv, 1<<20, grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if id != nil {
			ctx = authn.WithIdentity(ctx, *id)
		}
		return h(ctx, req)
	}))
	lis := bufconn.Listen(1 << 20)
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///lend", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		gs.Stop()
		cancel()
		if l.factory != nil {
			l.factory.Shutdown()
		}
	})
	return &lendServer{client: pb.NewReportServiceClient(conn), lender: l, logs: logs}
}

type nopObserver struct{}

func (nopObserver) ReportReceived(string) {}
func (nopObserver) ReportRejected(string) {}
func (nopObserver) ImageRefused(string)   {}

func ref(ns, name string) *pb.PodRef {
	return &pb.PodRef{Namespace: ns, Name: name, Uid: "uid-" + name}
}

func users(resp *pb.CredentialsResponse) []string {
	var out []string
	for _, c := range resp.GetCredentials() {
		out = append(out, c.GetUsername()+"@"+c.GetSecret())
	}
	return out
}

func TestLendOnlyOwnNodesPods(t *testing.T) {
	verified := &authn.Identity{Node: "node-a", ServiceAccount: "pullwatch/pullwatch-agent", Verified: true}
	s := startLender(t, ModeVerified, verified,
		pod("shop", "web", "node-a", "stale", "regcred"),
		pod("shop", "other", "node-b", "other-cred"),
		pod("shop", "nosecret", "node-a"),
		dockerSecret("shop", "regcred", "registry.example", "right", secretPass),
		dockerSecret("shop", "stale", "registry.example", "stale", "old-"+secretPass),
		dockerSecret("shop", "other-cred", "registry.example", "node-b-user", "b-"+secretPass),
		dockerSecret("shop", "unreferenced", "registry.example", "unreferenced", "u-"+secretPass),
	)
	ctx := context.Background()
	ask := func(t *testing.T, pods ...*pb.PodRef) *pb.CredentialsResponse {
		t.Helper()
		resp, err := s.client.Credentials(ctx, &pb.CredentialsRequest{Image: "registry.example/app", Pods: pods})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	t.Run("pod on the caller's node: its secrets in its order", func(t *testing.T) {
		resp := ask(t, ref("shop", "web"))
		if got, want := strings.Join(users(resp), ","), "stale@shop/stale,right@shop/regcred"; got != want {
			t.Errorf("lent %s, want %s", got, want)
		}
		if resp.GetCacheFor().AsDuration() <= 0 {
			t.Error("no cache_for")
		}
	})
	t.Run("pod on another node: nothing, refused", func(t *testing.T) {
		resp := ask(t, ref("shop", "other"))
		if len(resp.GetCredentials()) != 0 || len(resp.GetRefused()) != 1 {
			t.Errorf("lent %v refused %v, want nothing lent and the pod refused", users(resp), resp.GetRefused())
		}
	})
	t.Run("right name, other uid: refused", func(t *testing.T) {
		resp := ask(t, &pb.PodRef{Namespace: "shop", Name: "web", Uid: "uid-of-an-older-web"})
		if len(resp.GetCredentials()) != 0 || len(resp.GetRefused()) != 1 {
			t.Errorf("lent %v, want nothing", users(resp))
		}
	})
	t.Run("unknown pod: refused", func(t *testing.T) {
		if resp := ask(t, ref("shop", "ghost")); len(resp.GetCredentials()) != 0 || len(resp.GetRefused()) != 1 {
			t.Errorf("lent %v, want nothing", users(resp))
		}
	})
	t.Run("pod without secrets: nothing, no unreferenced secret", func(t *testing.T) {
		if resp := ask(t, ref("shop", "nosecret")); len(resp.GetCredentials()) != 0 || len(resp.GetRefused()) != 0 {
			t.Errorf("lent %v refused %v, want nothing and no refusal", users(resp), resp.GetRefused())
		}
	})
	t.Run("other registry: nothing matches", func(t *testing.T) {
		resp, err := s.client.Credentials(ctx, &pb.CredentialsRequest{Image: "other.example/app", Pods: []*pb.PodRef{ref("shop", "web")}})
		if err != nil || len(resp.GetCredentials()) != 0 {
			t.Errorf("lent %v (%v), want nothing", users(resp), err)
		}
	})
	t.Run("a request for another node", func(t *testing.T) {
		_, err := s.client.Credentials(ctx, &pb.CredentialsRequest{Image: "registry.example/app", Node: "node-b", Pods: []*pb.PodRef{ref("shop", "other")}})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("err %v, want PermissionDenied", err)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		_, err := s.client.Credentials(ctx, &pb.CredentialsRequest{Pods: []*pb.PodRef{ref("shop", "web")}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("no image: err %v, want InvalidArgument", err)
		}
	})

	for reason, want := range map[string]float64{ReasonPodNotOnNode: 3, ReasonNodeMismatch: 1, ReasonInvalid: 1, ReasonUnverified: 0} {
		if got := testutil.ToFloat64(s.lender.refusals.WithLabelValues(reason)); got != want {
			t.Errorf("refusals{reason=%s} = %v, want %v", reason, got, want)
		}
	}
	if got := testutil.ToFloat64(s.lender.requests.WithLabelValues("lent")); got != 1 {
		t.Errorf("requests{result=lent} = %v, want 1", got)
	}
	assertNoSecret(t, s)
}

func TestLendRefusesUnverified(t *testing.T) {
	objs := []runtime.Object{pod("shop", "web", "node-a", "regcred"), dockerSecret("shop", "regcred", "registry.example", "right", secretPass)}
	req := &pb.CredentialsRequest{Image: "registry.example/app", Node: "node-a", Pods: []*pb.PodRef{ref("shop", "web")}}
	for _, tt := range []struct {
		name string
		mode string
		id   *authn.Identity
		code codes.Code
	}{
		{"no identity", ModeVerified, nil, codes.PermissionDenied},
		{"auth off: identity not verified", ModeVerified, &authn.Identity{Node: "node-a"}, codes.PermissionDenied},
		{"lending off, even verified", ModeOff, &authn.Identity{Node: "node-a", Verified: true}, codes.FailedPrecondition},
		{"lab: unverified lent for the node named", ModeUnverifiedLab, nil, codes.OK},
		{"lab: a verified caller still only for its node", ModeUnverifiedLab, &authn.Identity{Node: "node-b", Verified: true}, codes.PermissionDenied},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := startLender(t, tt.mode, tt.id, objs...)
			resp, err := s.client.Credentials(context.Background(), req)
			if status.Code(err) != tt.code {
				t.Fatalf("err %v, want %v", err, tt.code)
			}
			if tt.code != codes.OK && resp != nil {
				t.Errorf("refused, yet answered %v", users(resp))
			}
			if tt.code == codes.OK && len(resp.GetCredentials()) != 1 {
				t.Errorf("lent %v, want the one credential", users(resp))
			}
			assertNoSecret(t, s)
		})
	}
}

func TestLendProblemsNeverQuoteSecrets(t *testing.T) {
	corrupt := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "corrupt"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"registry.example":{"password":` + secretPass + `}}}`)},
	}
	s := startLender(t, ModeVerified, &authn.Identity{Node: "node-a", Verified: true},
		pod("shop", "web", "node-a", "corrupt", "missing", "regcred"), corrupt,
		dockerSecret("shop", "regcred", "registry.example", "right", secretPass))
	resp, err := s.client.Credentials(context.Background(), &pb.CredentialsRequest{Image: "registry.example/app", Pods: []*pb.PodRef{ref("shop", "web")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := users(resp); len(got) != 1 || got[0] != "right@shop/regcred" {
		t.Errorf("lent %v, want the good secret's credential despite the others", got)
	}
	problems := strings.Join(resp.GetProblems(), "\n")
	if !strings.Contains(problems, "shop/corrupt: type kubernetes.io/dockerconfigjson: not valid JSON") || !strings.Contains(problems, "shop/missing: not found") {
		t.Errorf("problems %q, want the corrupt and the missing secret named", problems)
	}
	if strings.Contains(problems, secretPass) || strings.Contains(problems, "L3ND") {
		t.Errorf("problems quote the secret: %q", problems)
	}
	assertNoSecret(t, s)
}

// assertNoSecret checks logs and metrics for the password.
func assertNoSecret(t *testing.T, s *lendServer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.lender)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	dump := s.logs.String() + fmt.Sprint(mfs)
	if strings.Contains(dump, secretPass) || strings.Contains(dump, base64.StdEncoding.EncodeToString([]byte("right:"+secretPass))) {
		t.Errorf("the password appears in logs or metrics:\n%s", dump)
	}
}
