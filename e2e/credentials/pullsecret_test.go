package credentials_test

import (
	"context"
	"encoding/base64"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// aggregatorRBAC are the deploy/ files whose RBAC the aggregator runs
// with: its informers, and get on the pull secrets it lends.
var aggregatorRBAC = []string{"aggregator.yaml", "aggregator-pull-secrets.yaml"}

// TestCredentialsPullSecret: pull secrets are lent by the aggregator, never
// read by the agent. A real kube-apiserver with Pods bound to the agent's
// node (and another) that name imagePullSecrets, the same pods running on
// the node's containerd (same namespace, name and UID), the real aggregator
// with exactly the shipped RBAC, and the agent with no Kubernetes API at
// all. The agent reports the image available with credential_source
// pull_secret only through the pods of its node; a request naming a pod on
// another node, or a pod whose secrets do not match, gets nothing; no
// password shows in the agent's output, the aggregator's log or metrics.
//
// Here the aggregator runs as in the lab (--auth=none, plaintext) with
// --lend-credentials=unverified-lab, so it takes the node from the request;
// TestCredentialsLentToVerifiedAgents is the deployed path (TLS, tokens
// minted by the API server and bound to agent pods on their nodes).
func TestCredentialsPullSecret(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cluster := lab.Kube(ctx, t)

	cl := newCredLab(t, l, "cred-pullsecret")
	const node, otherNode, ns = "cred-node", "other-node", "shop"
	for _, n := range []string{node, otherNode} {
		if _, err := cluster.CreateNode(ctx, kubeapi.NodeOptions{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	secrets := map[string][2]string{
		"regcred":  {cl.user, cl.pass},
		"regcred2": {cl.user, cl.pass},
		"stale":    {cl.user, "old-" + cl.pass},
		// Right for the registry, but no pod of the node names it.
		"unreferenced": {"unreferenced-user", cl.pass},
	}
	for name, up := range secrets {
		if _, err := cluster.CreateDockerConfigSecret(ctx, ns, name, cl.reg.Addr(), up[0], up[1]); err != nil {
			t.Fatal(err)
		}
	}

	kubeconfig := lab.ApplyShippedRBAC(ctx, t, cluster, aggregatorRBAC...)
	grpcAddr, httpAddr, agg := l.StartAggregator(t, "--kubeconfig", kubeconfig, "--lend-credentials", "unverified-lab", "--log-level", "debug")
	admin := cluster.Client()

	// runPod binds a pod to apiNode in the API, naming secrets, and runs
	// it on this node's containerd under the same namespace, name and UID.
	runPod := func(t *testing.T, apiNode, name string, secrets ...string) *corev1.Pod {
		t.Helper()
		pod, err := cluster.CreatePod(ctx, kubeapi.PodOptions{Namespace: ns, Name: name, NodeName: apiNode,
			Images: []string{cl.ref}, ImagePullSecrets: secrets})
		if err != nil {
			t.Fatal(err)
		}
		sandbox, err := cl.node.Containerd.RunPod(ctx, containerd.PodSpec{Namespace: ns, Name: name, UID: string(pod.UID),
			Containers: []containerd.ContainerSpec{{Name: "c0", Image: cl.ref}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cl.node.Containerd.RemovePod(context.Background(), sandbox)
			_ = admin.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		})
		t.Logf("pod %s/%s (uid %s) on node %s (API) and on this node's containerd (sandbox %s), imagePullSecrets %v", ns, name, pod.UID, apiNode, sandbox, secrets)
		return pod
	}
	check := func(t *testing.T, extra ...string) agentcheck.Result {
		t.Helper()
		return cl.node.Check(t, append([]string{"--node-name", node, "--aggregator", grpcAddr, "--insecure", "--log-level", "debug"}, extra...)...)
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	lender := pb.NewReportServiceClient(conn)
	image := cl.reg.Addr() + "/cred/app"
	ask := func(t *testing.T, askNode string, pods ...*corev1.Pod) *pb.CredentialsResponse {
		t.Helper()
		req := &pb.CredentialsRequest{Image: image, Node: askNode}
		for _, p := range pods {
			req.Pods = append(req.Pods, &pb.PodRef{Namespace: p.Namespace, Name: p.Name, Uid: string(p.UID)})
		}
		resp, err := lender.Credentials(ctx, req)
		if err != nil {
			t.Fatalf("Credentials: %v", err)
		}
		return resp
	}

	t.Run("cached image, no pod: anonymous", func(t *testing.T) {
		cl.expectCredential(t, check(t), "unauthorized", "anonymous")
	})

	elsewhere := runPod(t, otherNode, "elsewhere", "regcred")
	t.Run("pod the API places on another node: its secrets do not count", func(t *testing.T) {
		cl.expectCredential(t, check(t), "unauthorized", "anonymous")
		if resp := ask(t, node, elsewhere); len(resp.GetCredentials()) != 0 || len(resp.GetRefused()) != 1 {
			t.Errorf("asked for a pod on another node: lent %d credentials, refused %v; want nothing lent", len(resp.GetCredentials()), resp.GetRefused())
		}
	})

	t.Run("pod on the node names the right secret: available from pull_secret", func(t *testing.T) {
		web := runPod(t, node, "private-web", "regcred")
		run := check(t)
		cl.expectCredential(t, run, "available", "pull_secret")
		if !strings.Contains(run.Stderr, "pull-secret lookup on") {
			t.Errorf("the log does not say pull-secret lookup is on%s", run.Dump())
		}

		t.Run("lent: only the secret the pod names", func(t *testing.T) {
			resp := ask(t, node, web)
			if len(resp.GetCredentials()) != 1 || resp.GetCredentials()[0].GetSecret() != ns+"/regcred" {
				var from []string
				for _, c := range resp.GetCredentials() {
					from = append(from, c.GetSecret())
				}
				t.Errorf("lent credentials from %v, want only %s/regcred", from, ns)
			}
		})
		t.Run("the right pod name with another UID: nothing", func(t *testing.T) {
			stale := web.DeepCopy()
			stale.UID = "0a0a0a0a-0000-4000-8000-000000000000"
			if resp := ask(t, node, stale); len(resp.GetCredentials()) != 0 {
				t.Errorf("lent %d credentials for another UID", len(resp.GetCredentials()))
			}
		})
		t.Run("the node's pod, asked for as another node: nothing", func(t *testing.T) {
			if resp := ask(t, otherNode, web); len(resp.GetCredentials()) != 0 {
				t.Errorf("lent %d credentials to a caller on %s", len(resp.GetCredentials()), otherNode)
			}
		})
		t.Run("--pull-secrets=off: unauthorized", func(t *testing.T) {
			run := check(t, "--pull-secrets", "off")
			cl.expectCredential(t, run, "unauthorized", "anonymous")
			if !strings.Contains(run.Stderr, "pull-secret lookup off") {
				t.Errorf("the log does not say pull-secret lookup is off%s", run.Dump())
			}
		})
		t.Run("no aggregator: unauthorized, off and said so", func(t *testing.T) {
			run := cl.node.Check(t, "--node-name", node)
			cl.expectCredential(t, run, "unauthorized", "anonymous")
			if !strings.Contains(run.Stderr, "no aggregator to lend") {
				t.Errorf("the log does not say why pull-secret lookup is off%s", run.Dump())
			}
		})
		t.Run("an aggregator lending only to verified agents: unauthorized, the refusal logged", func(t *testing.T) {
			verifiedAddr, _, _ := l.StartAggregator(t, "--kubeconfig", kubeconfig)
			run := cl.node.Check(t, "--node-name", node, "--aggregator", verifiedAddr, "--insecure")
			cl.expectCredential(t, run, "unauthorized", "anonymous")
			if !strings.Contains(run.Stderr, "lends no pull secrets") || !strings.Contains(run.Stderr, "verified agent token") {
				t.Errorf("the log does not say the aggregator refused to lend, and why%s", run.Dump())
			}
		})
	})

	t.Run("pod naming a stale secret and the right one: the right one wins", func(t *testing.T) {
		runPod(t, node, "two-secrets", "stale", "regcred")
		cl.expectCredential(t, check(t), "available", "pull_secret")
	})

	t.Run("pod naming only a stale secret: unauthorized", func(t *testing.T) {
		runPod(t, node, "stale-web", "stale", "missing")
		run := check(t)
		cl.expectCredential(t, run, "unauthorized", "pull_secret")
		if !strings.Contains(run.Stderr, ns+"/missing: not found") {
			t.Errorf("the agent's log does not name the missing secret%s", run.Dump())
		}
		_ = cl.node.ExpectPull(t, cl.ref, cl.authWith(cl.user, "old-"+cl.pass), false, "the pull secret is stale")
	})

	t.Run("the aggregator without RBAC on secrets: unauthorized, the fix logged", func(t *testing.T) {
		runPod(t, node, "norbac-web", "regcred2")
		if err := admin.RbacV1().ClusterRoleBindings().Delete(ctx, "pullwatch-aggregator-pull-secrets", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// RBAC changes reach the authorizer through its informer.
		var run agentcheck.Result
		for deadline := time.Now().Add(30 * time.Second); ; {
			run = check(t)
			if strings.Contains(run.Stderr, "the aggregator may not read it") || time.Now().After(deadline) {
				break
			}
			time.Sleep(2 * time.Second)
		}
		cl.expectCredential(t, run, "unauthorized", "anonymous")
		if !strings.Contains(run.Stderr, ns+"/regcred2: the aggregator may not read it") {
			t.Errorf("the agent's log does not say the aggregator may not read the secret%s", run.Dump())
		}
		lab.WaitFor(t, 10*time.Second, "the aggregator's log to name the missing RBAC", func() (bool, string) {
			b, _ := os.ReadFile(agg.LogFile())
			return strings.Contains(string(b), "grant it `get` on secrets"), agg.LogTail(10)
		}, agg)
	})

	t.Run("the status page warns of unverified lending", func(t *testing.T) {
		code, page := lab.HTTPGet("http://" + httpAddr + "/")
		if code != http.StatusOK || !strings.Contains(page, `class="notice status">⚠ credential lending to unverified callers (--lend-credentials=unverified-lab)`) {
			t.Errorf("status page (%d) has no unverified-lab notice:\n%s", code, lab.GrepLines(page, `<p class="notice`))
		}
	})

	t.Run("no password in the aggregator's log or metrics", func(t *testing.T) {
		code, metrics := lab.HTTPGet("http://" + httpAddr + "/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d", code)
		}
		t.Logf("%s", lab.GrepLines(metrics, "pullwatch_credential_"))
		for _, want := range []string{`pullwatch_credential_requests_total{result="lent"}`, `pullwatch_credential_refusals_total{reason="pod_not_on_node"}`} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics has no %s", want)
			}
		}
		logs, err := os.ReadFile(agg.LogFile())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(logs), "credentials lent") {
			t.Errorf("the aggregator's debug log does not show lending; the check below would prove nothing")
		}
		for _, leak := range []string{cl.pass, base64.StdEncoding.EncodeToString([]byte(cl.user + ":" + cl.pass))} {
			if strings.Contains(string(logs), leak) || strings.Contains(metrics, leak) {
				t.Errorf("the registry password appears in the aggregator's log or metrics")
			}
		}
	})
}
