package authn_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pullwatch/pullwatch/e2e/harness/certs"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

const (
	namespace  = "pullwatch"
	agentSA    = "pullwatch-agent"
	serverName = "pullwatch-aggregator.pullwatch.svc"
)

// world is the kube-apiserver the package's tests share, with two nodes
// and their agent pods and the shipped RBAC, and a test's own aggregator
// on it with --auth=kubernetes, --http-auth=kubernetes and TLS.
type world struct {
	kube               *kubeapi.Cluster
	grpcAddr, httpAddr string
	agg                *proc.Process
	tlsDir             string
	ca                 *x509.Certificate
	caKey              any
	pods               map[string]*corev1.Pod
}

// shared is the package's kube-apiserver (stopped by TestMain).
var shared struct {
	once       sync.Once
	kube       *kubeapi.Cluster
	dir        string
	kubeconfig string
	pods       map[string]*corev1.Pod
	skip, err  string
}

// startShared starts the kube-apiserver and creates the nodes, the pods,
// the ServiceAccounts and the shipped RBAC, once.
func startShared() {
	if _, err := kubeapi.LocateBinaries(""); err != nil {
		if proc.RealRequired() || !errors.Is(err, kubeapi.ErrNoBinaries) {
			shared.err = err.Error()
		} else {
			shared.skip = fmt.Sprintf("no kube-apiserver to test against: %v", err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	fail := func(err error) { shared.err = err.Error() }
	dir, err := os.MkdirTemp("", "pullwatch-e2e-authn-")
	if err != nil {
		fail(err)
		return
	}
	shared.dir = dir
	// Background: the API server outlives the context of any one test.
	c, err := kubeapi.Start(context.Background(), filepath.Join(dir, "kube"), kubeapi.Options{})
	if err != nil {
		fail(err)
		return
	}
	shared.kube = c
	if shared.kubeconfig, err = applyShippedRBAC(ctx, c); err != nil {
		fail(err)
		return
	}
	for _, n := range []string{"node-a", "node-b"} {
		if _, err := c.CreateNode(ctx, kubeapi.NodeOptions{Name: n}); err != nil {
			fail(err)
			return
		}
	}
	for _, sa := range []string{agentSA, "other"} {
		if err := c.EnsureServiceAccount(ctx, namespace, sa); err != nil {
			fail(err)
			return
		}
	}
	shared.pods = map[string]*corev1.Pod{}
	for _, p := range []struct{ name, node, sa string }{
		{"agent-a", "node-a", agentSA}, {"agent-b", "node-b", agentSA}, {"other-a", "node-a", "other"},
	} {
		pod, err := c.CreatePod(ctx, kubeapi.PodOptions{Namespace: namespace, Name: p.name, NodeName: p.node,
			ServiceAccountName: p.sa, Images: []string{"registry.invalid/pullwatch/agent:e2e"}})
		if err != nil {
			fail(err)
			return
		}
		shared.pods[p.name] = pod
	}
}

// setUp returns the shared kube-apiserver and starts an aggregator of the
// test's own on it, with a TLS certificate from a CA of its own.
func setUp(_ context.Context, t *testing.T, l *lab.Lab, extra ...string) *world {
	t.Helper()
	shared.once.Do(startShared)
	switch {
	case shared.skip != "":
		t.Skip(shared.skip)
	case shared.err != "":
		t.Fatalf("kube-apiserver: %s", shared.err)
	}
	w := &world{kube: shared.kube, pods: shared.pods}
	var err error
	w.ca, w.caKey, err = certs.CA("pullwatch-ca e2e")
	if err != nil {
		t.Fatal(err)
	}
	w.tlsDir = filepath.Join(t.TempDir(), "tls")
	writeServing(t, w.tlsDir, w.ca, w.caKey)
	w.grpcAddr, w.httpAddr, w.agg = l.StartAggregator(t, append([]string{"--kubeconfig", shared.kubeconfig, "--tls-dir", w.tlsDir,
		"--auth=kubernetes", "--http-auth=kubernetes", "--log-level=debug"}, extra...)...)
	return w
}

// applyShippedRBAC creates every ClusterRole and ClusterRoleBinding of
// deploy/aggregator.yaml and deploy/metrics-reader.yaml as they are, and
// returns a kubeconfig for the aggregator's ServiceAccount.
func applyShippedRBAC(ctx context.Context, c *kubeapi.Cluster) (string, error) {
	root, err := checkout.Root()
	if err != nil {
		return "", err
	}
	for _, f := range []string{"aggregator.yaml", "metrics-reader.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "deploy", f))
		if err != nil {
			return "", err
		}
		for _, doc := range strings.Split(string(b), "\n---") {
			var head metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return "", fmt.Errorf("deploy/%s: %w", f, err)
			}
			switch head.Kind {
			case "ClusterRole":
				var r rbacv1.ClusterRole
				if err := yaml.UnmarshalStrict([]byte(doc), &r); err != nil {
					return "", fmt.Errorf("deploy/%s: %w", f, err)
				}
				if _, err := c.Client().RbacV1().ClusterRoles().Create(ctx, &r, metav1.CreateOptions{}); err != nil {
					return "", err
				}
			case "ClusterRoleBinding":
				var rb rbacv1.ClusterRoleBinding
				if err := yaml.UnmarshalStrict([]byte(doc), &rb); err != nil {
					return "", fmt.Errorf("deploy/%s: %w", f, err)
				}
				if _, err := c.Client().RbacV1().ClusterRoleBindings().Create(ctx, &rb, metav1.CreateOptions{}); err != nil {
					return "", err
				}
			// The scrape token's objects (metrics-reader.yaml): the
			// scraper's ServiceAccount, the empty Secret, and the
			// aggregator's Role on just those two.
			case "ServiceAccount", "Secret", "Role", "RoleBinding":
				if f != "metrics-reader.yaml" {
					continue
				}
				if err := c.EnsureNamespace(ctx, namespace); err != nil {
					return "", err
				}
				if err := createShipped(ctx, c, head.Kind, []byte(doc)); err != nil {
					return "", fmt.Errorf("deploy/%s: %w", f, err)
				}
			}
		}
	}
	// RBAC matches a ServiceAccount by user name; a client certificate with
	// that name and the ServiceAccount groups is the same identity.
	return c.KubeconfigFor("system:serviceaccount:pullwatch:pullwatch-aggregator",
		[]string{"system:serviceaccounts", "system:serviceaccounts:pullwatch", "system:authenticated"})
}

// createShipped creates one namespaced object of deploy/ as it is.
func createShipped(ctx context.Context, c *kubeapi.Cluster, kind string, doc []byte) error {
	var err error
	switch kind {
	case "ServiceAccount":
		var o corev1.ServiceAccount
		if err = yaml.UnmarshalStrict(doc, &o); err == nil {
			_, err = c.Client().CoreV1().ServiceAccounts(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		}
	case "Secret":
		var o corev1.Secret
		if err = yaml.UnmarshalStrict(doc, &o); err == nil {
			_, err = c.Client().CoreV1().Secrets(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		}
	case "Role":
		var o rbacv1.Role
		if err = yaml.UnmarshalStrict(doc, &o); err == nil {
			_, err = c.Client().RbacV1().Roles(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		}
	case "RoleBinding":
		var o rbacv1.RoleBinding
		if err = yaml.UnmarshalStrict(doc, &o); err == nil {
			_, err = c.Client().RbacV1().RoleBindings(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		}
	}
	return err
}

// writeServing writes a serving certificate for serverName from ca into
// dir as a Secret volume has it (tls.crt, tls.key, ca.crt), replacing the
// files by rename as the kubelet's atomic writer swaps them.
func writeServing(t *testing.T, dir string, ca *x509.Certificate, caKey any) {
	t.Helper()
	der, key, err := certs.Issue(&x509.Certificate{DNSNames: []string{serverName}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"tls.crt": certs.PEM("CERTIFICATE", der), "tls.key": certs.PEM("PRIVATE KEY", keyDER), "ca.crt": certs.PEM("CERTIFICATE", ca.Raw),
	} {
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func (w *world) token(ctx context.Context, t *testing.T, sa string, audiences []string, pod string) string {
	t.Helper()
	tok, err := w.kube.ServiceAccountToken(ctx, namespace, sa, audiences, w.pods[pod])
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// clientTLS trusts ca for serverName.
func clientTLS(ca *x509.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// report opens a stream as the holder of token and sends a snapshot for
// node; nil when it is acknowledged, else the stream's error.
func report(ctx context.Context, addr string, tc *tls.Config, token, node string) error {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := pullwatchv1.NewReportServiceClient(conn).Report(ctx)
	if err != nil {
		return err
	}
	snap := &pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: node, AgentVersion: "e2e",
		Runtime: &pullwatchv1.Runtime{Name: "containerd", Version: "1.6.20"}}}
	if err := st.Send(&pullwatchv1.AgentMessage{Sequence: 1, Body: &pullwatchv1.AgentMessage_Snapshot{Snapshot: snap}}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	m, err := st.Recv()
	if err != nil {
		return err
	}
	if m.GetAck().GetSequence() != 1 {
		return fmt.Errorf("answer %v, want the ack of 1", m)
	}
	return st.CloseSend()
}

// expired re-signs token with the API server's ServiceAccount key with
// every time claim an hour and more in the past: a token the API server
// itself issued, only expired (TokenRequest will not mint one shorter than
// ten minutes).
func expired(t *testing.T, c *kubeapi.Cluster, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-2 * time.Hour).Unix()
	claims["iat"], claims["nbf"], claims["exp"] = past, past, past+600
	if ku, ok := claims["kubernetes.io"].(map[string]any); ok {
		delete(ku, "warnafter")
	}
	payload, err = json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(c.SAKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	signed := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func httpGet(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scraperToken returns a token of ServiceAccount monitoring/name, bound to
// the shipped pullwatch-metrics-reader ClusterRole when reader is set.
func (w *world) scraperToken(ctx context.Context, t *testing.T, name string, reader bool) string {
	t.Helper()
	c := w.kube
	if err := c.EnsureServiceAccount(ctx, "monitoring", name); err != nil {
		t.Fatal(err)
	}
	if reader {
		_, err := c.Client().RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "pullwatch-metrics-reader-" + name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "pullwatch-metrics-reader"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "monitoring", Name: name}},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	tok, err := c.ServiceAccountToken(ctx, "monitoring", name, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestNodeBoundAgents: only the agents' ServiceAccount, with a token for
// audience pullwatch bound to a pod, reports, and only for its pod's node.
func TestNodeBoundAgents(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := setUp(ctx, t, l)
	tc := clientTLS(w.ca)

	goodA := w.token(ctx, t, agentSA, []string{"pullwatch"}, "agent-a")
	goodB := w.token(ctx, t, agentSA, []string{"pullwatch"}, "agent-b")
	cases := []struct {
		name, token, node string
		want              codes.Code
		reason            string
	}{
		{"own node a", goodA, "node-a", codes.OK, ""},
		{"own node b", goodB, "node-b", codes.OK, ""},
		{"spoofed node", goodA, "node-b", codes.PermissionDenied, "node_mismatch"},
		{"no token", "", "node-a", codes.Unauthenticated, "missing_token"},
		{"expired token", expired(t, w.kube, goodA), "node-a", codes.Unauthenticated, "expired_token"},
		{"wrong audience", w.token(ctx, t, agentSA, []string{"not-pullwatch"}, "agent-a"), "node-a", codes.Unauthenticated, "wrong_audience"},
		{"API audience", w.token(ctx, t, agentSA, nil, "agent-a"), "node-a", codes.Unauthenticated, "wrong_audience"},
		{"wrong ServiceAccount", w.token(ctx, t, "other", []string{"pullwatch"}, "other-a"), "node-a", codes.PermissionDenied, "wrong_service_account"},
		{"not bound to a pod", w.token(ctx, t, agentSA, []string{"pullwatch"}, ""), "node-a", codes.PermissionDenied, "not_node_bound"},
		{"garbage", "not-a-token", "node-a", codes.Unauthenticated, "invalid_token"},
	}
	want := map[string]int{}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			err := report(ctx, w.grpcAddr, tc, tt.token, tt.node)
			if got := status.Code(err); got != tt.want {
				t.Fatalf("report for %s: %v (code %s), want %s\n%s", tt.node, err, got, tt.want, w.agg.LogTail(20))
			}
			if err != nil && strings.Contains(err.Error(), tt.token) && tt.token != "" {
				t.Errorf("the refusal repeats the token: %v", err)
			}
			t.Logf("%s: %v", tt.name, err)
		})
		if tt.reason != "" {
			want[tt.reason]++
		}
	}

	scraper := w.scraperToken(ctx, t, "prometheus", true)
	_, body := httpGet(t, "http://"+w.httpAddr+"/metrics", scraper)
	for reason, n := range want {
		line := fmt.Sprintf(`pullwatch_aggregator_auth_refused_total{reason=%q} %d`, reason, n)
		if !strings.Contains(body, line+"\n") {
			t.Errorf("/metrics lacks %s:\n%s", line, lab.GrepLines(body, "pullwatch_aggregator_auth_refused_total"))
		}
	}
	for _, node := range []string{"node-a", "node-b"} {
		if !strings.Contains(body, fmt.Sprintf(`pullwatch_agent_last_report_timestamp_seconds{node=%q}`, node)) {
			t.Errorf("/metrics has no report from %s", node)
		}
	}
	if log := w.agg.LogTail(400); strings.Contains(log, goodA) || strings.Contains(log, goodB) {
		t.Error("the aggregator's log holds an agent's token")
	}
	// Once per source and reason: the spoofing source is logged once
	// however often it retries.
	for range 3 {
		_ = report(ctx, w.grpcAddr, tc, goodA, "node-b")
	}
	if n := strings.Count(w.agg.LogTail(1000), "reason=node_mismatch"); n != 1 {
		t.Errorf("node_mismatch logged %d times for one source, want once", n)
	}
}

// TestRealAgentStreamsWithItsToken: the agent binary, given its pod's
// token file and the CA, streams over TLS; with another node's name it is
// refused.
func TestRealAgentStreamsWithItsToken(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := setUp(ctx, t, l)
	dir := t.TempDir()
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, certs.PEM("CERTIFICATE", w.ca.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(w.token(ctx, t, agentSA, []string{"pullwatch"}, "agent-a")), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--interval", "2s", "--token-file", tokenFile, "--ca-file", caFile, "--tls-server-name", serverName}
	agent := l.StartAgent(t, w.grpcAddr, []string{"NODE_NAME=node-a"}, args...)
	spoof := l.StartAgent(t, w.grpcAddr, []string{"NODE_NAME=node-b"}, args...)

	scraper := w.scraperToken(ctx, t, "prometheus", true)
	lab.WaitFor(t, 60*time.Second, "node-a's report, node-b's refusal", func() (bool, string) {
		_, body := httpGet(t, "http://"+w.httpAddr+"/metrics", scraper)
		ok := strings.Contains(body, `pullwatch_agent_last_report_timestamp_seconds{node="node-a"}`) &&
			!strings.Contains(body, `pullwatch_agent_last_report_timestamp_seconds{node="node-b"}`) &&
			!strings.Contains(body, `pullwatch_aggregator_auth_refused_total{reason="node_mismatch"} 0`)
		return ok, lab.GrepLines(body, "pullwatch_agent_last_report") + "\n" + lab.GrepLines(body, "pullwatch_aggregator_auth_refused_total")
	}, agent, spoof, w.agg)
	if !strings.Contains(spoof.LogTail(100), "PermissionDenied") {
		t.Errorf("the spoofing agent's log does not say PermissionDenied:\n%s", spoof.LogTail(30))
	}
}

// TestTLS: an agent that trusts another CA is refused; a rotated
// certificate is served without a restart.
func TestTLS(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := setUp(ctx, t, l)
	tok := w.token(ctx, t, agentSA, []string{"pullwatch"}, "agent-a")

	other, otherKey, err := certs.CA("someone else's CA")
	if err != nil {
		t.Fatal(err)
	}
	if err := report(ctx, w.grpcAddr, clientTLS(other), tok, "node-a"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("agent trusting another CA: %v, want Unavailable for the certificate", err)
	}
	wrongName := clientTLS(w.ca)
	wrongName.ServerName = "pullwatch-aggregator.elsewhere.svc"
	if err := report(ctx, w.grpcAddr, wrongName, tok, "node-a"); status.Code(err) != codes.Unavailable {
		t.Fatalf("agent expecting another name: %v, want Unavailable", err)
	}
	// The aggregator refuses with Unavailable until it has listed the
	// cluster's Nodes (the agent retries); so does this check.
	lab.WaitFor(t, 30*time.Second, "the agent trusting the CA accepted", func() (bool, string) {
		err := report(ctx, w.grpcAddr, clientTLS(w.ca), tok, "node-a")
		if err != nil && !(status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "not loaded the cluster's Nodes")) {
			t.Fatalf("agent trusting the CA: %v", err)
		}
		return err == nil, fmt.Sprint(err)
	})

	// Rotate: the Secret now holds a certificate of the other CA.
	writeServing(t, w.tlsDir, other, otherKey)
	lab.WaitFor(t, 15*time.Second, "the rotated certificate served", func() (bool, string) {
		err := report(ctx, w.grpcAddr, clientTLS(other), tok, "node-a")
		return err == nil, fmt.Sprint(err)
	}, w.agg)
	if err := report(ctx, w.grpcAddr, clientTLS(w.ca), tok, "node-a"); status.Code(err) != codes.Unavailable {
		t.Errorf("after rotation, a client of the old CA: %v, want Unavailable", err)
	}

	// Plaintext to a TLS listener fails too.
	conn, err := grpc.NewClient(w.grpcAddr, grpc.WithTransportCredentials(insecureCreds()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	if st, err := pullwatchv1.NewReportServiceClient(conn).Report(sctx); err == nil {
		if _, err := st.Recv(); err == nil {
			t.Error("plaintext stream to the TLS listener answered")
		}
	}
}

// TestMetricsAuthorization: /metrics and the status page need a token
// with RBAC get on the path; the probes need none.
func TestMetricsAuthorization(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := setUp(ctx, t, l)
	reader := w.scraperToken(ctx, t, "prometheus", true)
	nobody := w.scraperToken(ctx, t, "nobody", false)
	base := "http://" + w.httpAddr
	for _, tt := range []struct {
		path, token string
		want        int
	}{
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "garbage", http.StatusUnauthorized},
		{"/metrics", nobody, http.StatusForbidden},
		{"/metrics", reader, http.StatusOK},
		{"/", "", http.StatusUnauthorized},
		{"/", nobody, http.StatusForbidden},
		{"/", reader, http.StatusOK},
		{"/healthz", "", http.StatusOK},
		{"/readyz", "", http.StatusOK},
	} {
		who := map[string]string{"": "no token", "garbage": "garbage", nobody: "monitoring/nobody", reader: "monitoring/prometheus"}[tt.token]
		code, body := httpGet(t, base+tt.path, tt.token)
		if code != tt.want {
			t.Errorf("GET %s with %s: %d, want %d\n%.300s", tt.path, who, code, tt.want, body)
		}
		if tt.path == "/metrics" && code == http.StatusOK && !strings.Contains(body, "pullwatch_aggregator_auth_refused_total") {
			t.Errorf("/metrics lacks pullwatch_aggregator_auth_refused_total")
		}
		if tt.path == "/" && code == http.StatusOK && bytes.Contains([]byte(body), []byte("authentication is off")) {
			t.Errorf("status page says authentication is off, with --auth=kubernetes")
		}
	}
}

// TestScrapeTokenSecret: with deploy/'s audience (pullwatch-metrics) and
// scrape token Secret, the aggregator writes a token of
// pullwatch-metrics-scraper for that audience into the shipped Secret with
// the shipped RBAC; that token reads /metrics and the status page and is
// refused by the Kubernetes API; a reader's token for the API's own
// audience (what a Prometheus sends from its ServiceAccount) is refused,
// and the same reader's token for pullwatch-metrics is let in.
func TestScrapeTokenSecret(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const audience, secret = "pullwatch-metrics", "pullwatch-metrics-token"
	w := setUp(ctx, t, l, "--http-token-audiences="+audience, "--scrape-token-secret="+namespace+"/"+secret)
	var token string
	lab.WaitFor(t, 30*time.Second, "the aggregator's token in Secret "+secret, func() (bool, string) {
		s, err := w.kube.Client().CoreV1().Secrets(namespace).Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		token = string(s.Data["token"])
		return token != "", fmt.Sprint(s.Annotations)
	}, w.agg)
	base := "http://" + w.httpAddr
	if code, body := httpGet(t, base+"/metrics", token); code != http.StatusOK {
		t.Errorf("GET /metrics with the Secret's token: %d\n%.300s", code, body)
	}
	if code, _ := httpGet(t, base+"/", token); code != http.StatusOK {
		t.Errorf("GET / with the Secret's token: %d", code)
	}
	// Worthless against the Kubernetes API: not authenticated for the
	// API server's own audiences.
	if st, err := w.kube.ReviewToken(ctx, token, nil); err != nil || st.Authenticated {
		t.Errorf("the Kubernetes API accepts the scrape token: %+v %v", st, err)
	}
	if st, err := w.kube.ReviewToken(ctx, token, []string{audience}); err != nil || !st.Authenticated ||
		st.User.Username != "system:serviceaccount:"+namespace+":pullwatch-metrics-scraper" {
		t.Errorf("the scrape token reviewed for %s: %+v %v", audience, st, err)
	}
	reader := w.scraperToken(ctx, t, "prometheus", true)
	if code, _ := httpGet(t, base+"/metrics", reader); code != http.StatusUnauthorized {
		t.Errorf("GET /metrics with a reader's token for the API's audience: %d, want 401", code)
	}
	if err := w.kube.EnsureServiceAccount(ctx, "monitoring", "prometheus"); err != nil {
		t.Fatal(err)
	}
	aud, err := w.kube.ServiceAccountToken(ctx, "monitoring", "prometheus", []string{audience}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := httpGet(t, base+"/metrics", aud); code != http.StatusOK {
		t.Errorf("GET /metrics with the reader's token for %s: %d, want 200", audience, code)
	}
	// Deleting the Secret revokes its token (bound to it); the aggregator
	// cannot create it again (RBAC: update only) and says so.
	if err := w.kube.Client().CoreV1().Secrets(namespace).Delete(ctx, secret, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, 30*time.Second, "the deleted Secret's token refused", func() (bool, string) {
		st, err := w.kube.ReviewToken(ctx, token, []string{audience})
		return err == nil && !st.Authenticated, fmt.Sprint(st, err)
	}, w.agg)
}

// TestMetricsOverTLS: with --http-tls, /metrics, the status page and the
// probes are served over TLS with the gRPC listener's files: a scraper that
// verifies the certificate with the aggregator's CA for the Service's name
// reads /metrics with its token; a plaintext request is answered 400
// before any handler (so before any token is looked at), and the rotated
// certificate is served without a restart.
func TestMetricsOverTLS(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := setUp(ctx, t, l, "--http-tls")
	reader := w.scraperToken(ctx, t, "prometheus", true)
	verified := func(ca *x509.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(ca)}}
	}
	get := func(c *http.Client, url, token string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, "", err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	base := "https://" + w.httpAddr
	for _, tt := range []struct {
		path, token string
		want        int
	}{
		{"/metrics", reader, http.StatusOK},
		{"/metrics", "", http.StatusUnauthorized},
		{"/", reader, http.StatusOK},
		{"/healthz", "", http.StatusOK},
		{"/readyz", "", http.StatusOK},
	} {
		code, body, err := get(verified(w.ca), base+tt.path, tt.token)
		if err != nil || code != tt.want {
			t.Errorf("GET %s over verified TLS: %d, %v; want %d\n%.300s", tt.path, code, err, tt.want, body)
		}
		if tt.path == "/" && code == http.StatusOK && strings.Contains(body, "HTTP without TLS") {
			t.Error("the status page says HTTP is without TLS, with --http-tls")
		}
	}
	if code, body, err := get(http.DefaultClient, "http://"+w.httpAddr+"/metrics", reader); err == nil && code != http.StatusBadRequest {
		t.Errorf("plaintext GET /metrics: %d, want 400 (an HTTPS listener)\n%.300s", code, body)
	}
	other, otherKey, err := certs.CA("someone else's CA")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(verified(other), base+"/metrics", reader); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a scraper trusting another CA: %v, want a certificate error", err)
	}
	writeServing(t, w.tlsDir, other, otherKey)
	lab.WaitFor(t, 15*time.Second, "the rotated certificate served on the HTTP port", func() (bool, string) {
		code, _, err := get(verified(other), base+"/metrics", reader)
		return err == nil && code == http.StatusOK, fmt.Sprint(code, err)
	}, w.agg)
}

// TestMetricsWithoutTLSNoticed: without --http-tls the status page says
// that scrapers' tokens cross the network in plaintext.
func TestMetricsWithoutTLSNoticed(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := setUp(ctx, t, l)
	reader := w.scraperToken(ctx, t, "prometheus", true)
	code, body := httpGet(t, "http://"+w.httpAddr+"/", reader)
	if code != http.StatusOK || !strings.Contains(body, "HTTP without TLS (no --http-tls)") {
		t.Errorf("status page (%d) does not say HTTP is without TLS:\n%.500s", code, body)
	}
}

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }
