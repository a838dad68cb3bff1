package credentials_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/certs"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

const (
	agentNamespace = "pullwatch"
	agentSA        = "pullwatch-agent"
	serverName     = "pullwatch-aggregator.pullwatch.svc"
	tokenAudience  = "pullwatch"
)

// TestCredentialsLentToVerifiedAgents: the lending path as deployed. The
// aggregator runs with --auth=kubernetes, TLS and the shipped RBAC; each
// agent holds a ServiceAccount token minted by the real kube-apiserver
// (TokenRequest, audience pullwatch) bound to its agent pod on its node.
// The agent on cred-node gets its pod's pull secret; the same pod asked
// for with other-node's token gets nothing, so does a request claiming
// cred-node with other-node's token, a token for another audience, and no
// token at all.
func TestCredentialsLentToVerifiedAgents(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cluster := lab.Kube(ctx, t)

	cl := newCredLab(t, l, "cred-verified")
	const node, otherNode, ns = "cred-node", "other-node", "shop"
	agentPods := map[string]*corev1.Pod{}
	for _, n := range []string{node, otherNode} {
		if _, err := cluster.CreateNode(ctx, kubeapi.NodeOptions{Name: n}); err != nil {
			t.Fatal(err)
		}
		if err := cluster.EnsureServiceAccount(ctx, agentNamespace, agentSA); err != nil {
			t.Fatal(err)
		}
		p, err := cluster.CreatePod(ctx, kubeapi.PodOptions{Namespace: agentNamespace, Name: "agent-" + n, NodeName: n,
			ServiceAccountName: agentSA, Images: []string{"registry.invalid/pullwatch/agent:e2e"}})
		if err != nil {
			t.Fatal(err)
		}
		agentPods[n] = p
	}
	if _, err := cluster.CreateDockerConfigSecret(ctx, ns, "regcred", cl.reg.Addr(), cl.user, cl.pass); err != nil {
		t.Fatal(err)
	}
	token := func(t *testing.T, n string, audiences ...string) string {
		t.Helper()
		if len(audiences) == 0 {
			audiences = []string{tokenAudience}
		}
		tok, err := cluster.ServiceAccountToken(ctx, agentNamespace, agentSA, audiences, agentPods[n])
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	ca, caKey, err := certs.CA("pullwatch-ca e2e credentials")
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(t.TempDir(), "tls")
	der, key, err := certs.Issue(&x509.Certificate{DNSNames: []string{serverName}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(tlsDir, "ca.crt")
	for name, data := range map[string][]byte{"tls.crt": certs.PEM("CERTIFICATE", der), "tls.key": certs.PEM("PRIVATE KEY", keyDER), "ca.crt": certs.PEM("CERTIFICATE", ca.Raw)} {
		if err := os.MkdirAll(tlsDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tlsDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	kubeconfig := lab.ApplyShippedRBAC(ctx, t, cluster, aggregatorRBAC...)
	grpcAddr, _, agg := l.StartAggregator(t, "--kubeconfig", kubeconfig, "--tls-dir", tlsDir, "--auth=kubernetes", "--http-auth=none", "--log-level=debug")

	// The pod on cred-node that names the pull secret, on the API and on
	// the node's containerd (same namespace, name, UID).
	web, err := cluster.CreatePod(ctx, kubeapi.PodOptions{Namespace: ns, Name: "private-web", NodeName: node,
		Images: []string{cl.ref}, ImagePullSecrets: []string{"regcred"}})
	if err != nil {
		t.Fatal(err)
	}
	sandbox, err := cl.node.Containerd.RunPod(ctx, containerd.PodSpec{Namespace: ns, Name: web.Name, UID: string(web.UID),
		Containers: []containerd.ContainerSpec{{Name: "c0", Image: cl.ref}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.node.Containerd.RemovePod(context.Background(), sandbox) })

	t.Run("the agent on the pod's node: available from pull_secret", func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(token(t, node)), 0o600); err != nil {
			t.Fatal(err)
		}
		run := cl.node.Check(t, "--node-name", node, "--aggregator", grpcAddr, "--token-file", tokenFile,
			"--ca-file", caFile, "--tls-server-name", serverName, "--log-level", "debug")
		cl.expectCredential(t, run, "available", "pull_secret")
		if tok := string(mustRead(t, tokenFile)); strings.Contains(run.Stdout+run.Stderr, tok) {
			t.Errorf("the token appears in the agent's output")
		}
	})
	t.Run("the agent of another node: the pod's pull secret is not lent", func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(token(t, otherNode)), 0o600); err != nil {
			t.Fatal(err)
		}
		// It says it is cred-node; its token says other-node.
		run := cl.node.Check(t, "--node-name", node, "--aggregator", grpcAddr, "--token-file", tokenFile,
			"--ca-file", caFile, "--tls-server-name", serverName)
		cl.expectCredential(t, run, "unauthorized", "anonymous")
	})

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	ask := func(t *testing.T, tok, askNode string) (*pb.CredentialsResponse, error) {
		t.Helper()
		opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}))}
		if tok != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(bearer(tok)))
		}
		conn, err := grpc.NewClient(grpcAddr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return pb.NewReportServiceClient(conn).Credentials(ctx, &pb.CredentialsRequest{Image: cl.reg.Addr() + "/cred/app", Node: askNode,
			Pods: []*pb.PodRef{{Namespace: ns, Name: web.Name, Uid: string(web.UID)}}})
	}
	t.Run("asked directly", func(t *testing.T) {
		if resp, err := ask(t, token(t, node), ""); err != nil || len(resp.GetCredentials()) != 1 {
			t.Errorf("the pod's own node: %d credentials (%v), want 1", len(resp.GetCredentials()), err)
		}
		if resp, err := ask(t, token(t, otherNode), ""); err != nil || len(resp.GetCredentials()) != 0 || len(resp.GetRefused()) != 1 {
			t.Errorf("another node's token: %d credentials, refused %v (%v); want nothing lent", len(resp.GetCredentials()), resp.GetRefused(), err)
		}
		if _, err := ask(t, token(t, otherNode), node); status.Code(err) != codes.PermissionDenied {
			t.Errorf("another node's token claiming the pod's node: %v, want PermissionDenied", err)
		}
		if _, err := ask(t, token(t, node, "not-pullwatch"), ""); status.Code(err) == codes.OK {
			t.Error("a token for another audience was lent credentials")
		}
		if _, err := ask(t, "", ""); status.Code(err) == codes.OK {
			t.Error("a caller without a token was lent credentials")
		}
	})
	t.Run("no password in the aggregator's log", func(t *testing.T) {
		logs := string(mustRead(t, agg.LogFile()))
		if strings.Contains(logs, cl.pass) {
			t.Error("the registry password appears in the aggregator's log")
		}
	})
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
