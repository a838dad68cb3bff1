package credentials_test

import (
	"context"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

// agentRBAC is the ClusterRole docs/credentials.md asks for: list/watch
// pods (the informer, field-selected to the node) and get secrets (only
// the ones those pods name are ever read, but RBAC cannot say so).
var agentRBAC = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}},
}

// TestCredentialsPullSecret: a real kube-apiserver with a Pod bound to the
// agent's node that names an imagePullSecret, and the same pod running on
// the node's containerd. The agent, with only the RBAC the docs ask for,
// reports the image available with credential_source pull_secret; with
// --pull-secrets=off, or a pod naming a secret with the wrong password, or
// without the secrets rule, unauthorized.
func TestCredentialsPullSecret(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cluster := lab.Kube(ctx, t)

	cl := newCredLab(t, l, "cred-pullsecret")
	const node, ns = "cred-node", "shop"
	if _, err := cluster.CreateNode(ctx, kubeapi.NodeOptions{Name: node}); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.CreateDockerConfigSecret(ctx, ns, "regcred", cl.reg.Addr(), cl.user, cl.pass); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.CreateDockerConfigSecret(ctx, ns, "stale", cl.reg.Addr(), cl.user, "old-"+cl.pass); err != nil {
		t.Fatal(err)
	}

	// The agent's identity: a user bound to exactly the documented rules.
	const agentUser = "pullwatch-agent-e2e"
	admin := cluster.Client()
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "pullwatch-agent"}, Rules: agentRBAC,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pullwatch-agent"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "pullwatch-agent"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: agentUser}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := cluster.KubeconfigFor(agentUser, nil)
	if err != nil {
		t.Fatal(err)
	}

	// runPod binds a pod to the agent's node in the API, naming secrets,
	// and runs it on the node's containerd under the same namespace/name.
	runPod := func(t *testing.T, apiNode, name string, secrets ...string) {
		t.Helper()
		if _, err := cluster.CreatePod(ctx, kubeapi.PodOptions{Namespace: ns, Name: name, NodeName: apiNode,
			Images: []string{cl.ref}, ImagePullSecrets: secrets}); err != nil {
			t.Fatal(err)
		}
		sandbox, err := cl.node.Containerd.RunPod(ctx, containerd.PodSpec{Namespace: ns, Name: name,
			Containers: []containerd.ContainerSpec{{Name: "c0", Image: cl.ref}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cl.node.Containerd.RemovePod(context.Background(), sandbox)
			_ = admin.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		})
		t.Logf("pod %s/%s on node %s (API) and on this node's containerd (sandbox %s), imagePullSecrets %v", ns, name, apiNode, sandbox, secrets)
	}
	check := func(t *testing.T, extra ...string) agentcheck.Result {
		t.Helper()
		return cl.node.Check(t, append([]string{"--node-name", node, "--kubeconfig", kubeconfig, "--log-level", "debug"}, extra...)...)
	}

	t.Run("cached image, no pod: anonymous", func(t *testing.T) {
		cl.expectCredential(t, check(t), "unauthorized", "anonymous")
	})

	t.Run("pod the API places on another node: its secrets do not count", func(t *testing.T) {
		runPod(t, "other-node", "elsewhere", "regcred")
		cl.expectCredential(t, check(t), "unauthorized", "anonymous")
	})

	t.Run("pod on the node names the right secret: available from pull_secret", func(t *testing.T) {
		runPod(t, node, "private-web", "regcred")
		run := check(t)
		cl.expectCredential(t, run, "available", "pull_secret")
		if !strings.Contains(run.Stderr, "pull-secret lookup on") {
			t.Errorf("the log does not say pull-secret lookup is on%s", run.Dump())
		}

		t.Run("--pull-secrets=off: unauthorized", func(t *testing.T) {
			run := check(t, "--pull-secrets", "off")
			cl.expectCredential(t, run, "unauthorized", "anonymous")
			if !strings.Contains(run.Stderr, "pull-secret lookup off") {
				t.Errorf("the log does not say pull-secret lookup is off%s", run.Dump())
			}
		})

		t.Run("without RBAC on secrets: unauthorized, the fix logged", func(t *testing.T) {
			noSecrets := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "pullwatch-agent"}, Rules: agentRBAC[:1]}
			if _, err := admin.RbacV1().ClusterRoles().Update(ctx, noSecrets, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				full := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "pullwatch-agent"}, Rules: agentRBAC}
				if _, err := admin.RbacV1().ClusterRoles().Update(context.Background(), full, metav1.UpdateOptions{}); err != nil {
					t.Errorf("restore RBAC: %v", err)
				}
			})
			// RBAC changes reach the authorizer through its informer.
			var run agentcheck.Result
			for deadline := time.Now().Add(30 * time.Second); ; {
				run = check(t)
				if strings.Contains(run.Stderr, "grant it `get` on secrets") || time.Now().After(deadline) {
					break
				}
				time.Sleep(time.Second)
			}
			cl.expectCredential(t, run, "unauthorized", "anonymous")
			if !strings.Contains(run.Stderr, "grant it `get` on secrets") {
				t.Errorf("the log does not say which RBAC is missing%s", run.Dump())
			}
		})
	})

	t.Run("pod naming a stale secret and the right one: the right one wins", func(t *testing.T) {
		runPod(t, node, "two-secrets", "stale", "regcred")
		cl.expectCredential(t, check(t), "available", "pull_secret")
	})

	t.Run("pod naming only a stale secret: unauthorized", func(t *testing.T) {
		runPod(t, node, "stale-web", "stale", "missing")
		cl.expectCredential(t, check(t), "unauthorized", "pull_secret")
		_ = cl.node.ExpectPull(t, cl.ref, cl.authWith(cl.user, "old-"+cl.pass), false, "the pull secret is stale")
	})
}
