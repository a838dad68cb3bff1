package kubeapi_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// requireKube skips the test unless it runs as root with etcd and
// kube-apiserver built; with PULLWATCH_REQUIRE_REAL=1 it fails instead.
func requireKube(t *testing.T) {
	t.Helper()
	proc.RequireReal(t)
	if _, err := kubeapi.LocateBinaries(""); err != nil {
		proc.SkipOrFail(t, "needs "+err.Error())
	}
}

func clientFromKubeconfig(t *testing.T, path string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func whoami(ctx context.Context, t *testing.T, cs kubernetes.Interface) authenticationv1.UserInfo {
	t.Helper()
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	return r.Status.UserInfo
}

func TestCluster(t *testing.T) {
	requireKube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	keepLogs(t, dir)

	start := time.Now()
	c, err := kubeapi.Start(ctx, dir, kubeapi.Options{
		Users: map[string][]string{"viewer": {"pullwatch:viewers"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = c.Stop()
		}
	})
	t.Logf("cluster ready in %v at %s (etcd %s)", time.Since(start).Round(time.Millisecond), c.URL(), c.EtcdURL())
	apiPid, etcdPid := c.APIServerPid(), c.EtcdPid()

	// The admin kubeconfig works on its own (as kubectl or a binary under
	// test would load it).
	admin := clientFromKubeconfig(t, c.Kubeconfig())
	v, err := admin.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.34.2" {
		t.Errorf("server version %q, want v1.34.2 (build ldflags)", v.GitVersion)
	}
	if u := whoami(ctx, t, admin); u.Username != kubeapi.AdminUser || !contains(u.Groups, "system:masters") {
		t.Errorf("admin is %+v", u)
	}

	// Nodes and pods bound to them.
	for _, n := range []struct{ name, zone string }{{"node-a", "zone-1"}, {"node-b", "zone-2"}} {
		node, err := c.CreateNode(ctx, kubeapi.NodeOptions{Name: n.name, Labels: map[string]string{kubeapi.LabelZone: n.zone}})
		if err != nil {
			t.Fatal(err)
		}
		if node.Labels[kubeapi.LabelZone] != n.zone || node.Labels[kubeapi.LabelHostname] != n.name {
			t.Errorf("node %s labels %v", n.name, node.Labels)
		}
		if len(node.Status.Conditions) != 1 || node.Status.Conditions[0].Status != corev1.ConditionTrue {
			t.Errorf("node %s conditions %+v", n.name, node.Status.Conditions)
		}
	}
	if _, err := c.CreateDockerConfigSecret(ctx, "apps", "regcred", "127.0.0.1:5000", "alice", "s3cret"); err != nil {
		t.Fatal(err)
	}
	owner := metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7d9f", UID: "0b0e5a4c-1111-2222-3333-444455556666"}
	web, err := c.CreatePod(ctx, kubeapi.PodOptions{
		Namespace: "apps", Name: "web-7d9f-abcde", NodeName: "node-a",
		Images:           []string{"127.0.0.1:5000/web:1.0", "127.0.0.1:5000/sidecar:2"},
		ImagePullSecrets: []string{"regcred"},
		OwnerReferences:  []metav1.OwnerReference{owner},
	})
	if err != nil {
		t.Fatal(err)
	}
	if web.Spec.NodeName != "node-a" || len(web.Spec.ImagePullSecrets) != 1 || web.Spec.ImagePullSecrets[0].Name != "regcred" ||
		len(web.OwnerReferences) != 1 || web.OwnerReferences[0].Kind != "ReplicaSet" || len(web.Spec.Containers) != 2 {
		t.Errorf("pod as created: %+v", web)
	}
	if _, err := c.CreatePod(ctx, kubeapi.PodOptions{Namespace: "apps", Name: "db-0", NodeName: "node-b", Images: []string{"127.0.0.1:5000/db:9"}}); err != nil {
		t.Fatal(err)
	}
	agentPod, err := c.CreatePod(ctx, kubeapi.PodOptions{
		Namespace: "pullwatch", Name: "pullwatch-agent-x1", NodeName: "node-a",
		Images: []string{"127.0.0.1:5000/pullwatch-agent:dev"}, ServiceAccountName: "pullwatch-agent",
	})
	if err != nil {
		t.Fatal(err)
	}

	onA, err := admin.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", "node-a").String()})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range onA.Items {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	if strings.Join(names, ",") != "apps/web-7d9f-abcde,pullwatch/pullwatch-agent-x1" {
		t.Errorf("pods on node-a: %v", names)
	}
	secret, err := admin.CoreV1().Secrets("apps").Get(ctx, web.Spec.ImagePullSecrets[0].Name, metav1.GetOptions{})
	if err != nil || secret.Type != corev1.SecretTypeDockerConfigJson || !strings.Contains(string(secret.Data[corev1.DockerConfigJsonKey]), "127.0.0.1:5000") {
		t.Errorf("pull secret: %v %+v", err, secret)
	}

	// A restricted token user: real RBAC says no to secrets, and yes to
	// pods once a ClusterRole is bound to its group.
	kcViewer, err := c.KubeconfigFor("viewer", []string{"pullwatch:viewers"})
	if err != nil {
		t.Fatal(err)
	}
	viewer := clientFromKubeconfig(t, kcViewer)
	if u := whoami(ctx, t, viewer); u.Username != "viewer" || !contains(u.Groups, "pullwatch:viewers") {
		t.Errorf("viewer is %+v", u)
	}
	_, err = viewer.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("viewer listing secrets: %v, want Forbidden", err)
	}
	if _, err := c.KubeconfigFor("viewer", []string{"system:masters"}); err == nil {
		t.Error("KubeconfigFor accepted groups the token user does not have")
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "viewers-read-pods"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "pullwatch:viewers"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The RBAC authorizer reads bindings through an informer: allow it a moment.
	bound := time.Now()
	if err := proc.Poll(ctx, 10*time.Second, 100*time.Millisecond, func() error {
		_, err := viewer.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"})
		return err
	}); err != nil {
		t.Errorf("viewer listing pods after the binding: %v", err)
	}
	t.Logf("binding effective after %v", time.Since(bound).Round(time.Millisecond))
	if _, err = viewer.CoreV1().Secrets("apps").Get(ctx, "regcred", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("viewer getting a secret: %v, want Forbidden", err)
	}

	// A client-certificate identity made up on the spot (a node's).
	kcNode, err := c.KubeconfigFor("system:node:node-a", []string{"system:nodes"})
	if err != nil {
		t.Fatal(err)
	}
	nodeClient := clientFromKubeconfig(t, kcNode)
	if u := whoami(ctx, t, nodeClient); u.Username != "system:node:node-a" || !contains(u.Groups, "system:nodes") {
		t.Errorf("node identity is %+v", u)
	}

	// A ServiceAccount token bound to the agent pod (and so to node-a).
	tok, err := c.ServiceAccountToken(ctx, "pullwatch", "pullwatch-agent", []string{"pullwatch-aggregator"}, agentPod)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.ReviewToken(ctx, tok, []string{"pullwatch-aggregator"})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Authenticated || st.User.Username != "system:serviceaccount:pullwatch:pullwatch-agent" ||
		fmt.Sprint(st.User.Extra["authentication.kubernetes.io/pod-name"]) != "[pullwatch-agent-x1]" ||
		fmt.Sprint(st.User.Extra["authentication.kubernetes.io/node-name"]) != "[node-a]" {
		t.Errorf("token review: %+v", st)
	}
	if st, err := c.ReviewToken(ctx, tok, []string{"someone-else"}); err != nil || st.Authenticated {
		t.Errorf("token accepted for the wrong audience: %+v %v", st, err)
	}
	plain, err := c.ServiceAccountToken(ctx, "pullwatch", "pullwatch-agent", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := c.ReviewToken(ctx, plain, nil); err != nil || !st.Authenticated {
		t.Errorf("unbound token: %+v %v", st, err)
	}
	// Deleting the pod revokes the token bound to it. A plain delete only
	// marks a pod bound to a node Terminating (no kubelet confirms it), and
	// the token stays valid meanwhile.
	if err := admin.CoreV1().Pods("pullwatch").Delete(ctx, agentPod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if p, err := admin.CoreV1().Pods("pullwatch").Get(ctx, agentPod.Name, metav1.GetOptions{}); err != nil || p.DeletionTimestamp == nil {
		t.Errorf("pod after a graceful delete: %v, %+v", err, p)
	}
	if err := c.DeletePod(ctx, "pullwatch", agentPod.Name); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	if err := proc.Poll(ctx, 20*time.Second, 100*time.Millisecond, func() error {
		st, err := c.ReviewToken(ctx, tok, []string{"pullwatch-aggregator"})
		if err != nil {
			return err
		}
		if st.Authenticated {
			return errors.New("bound token still valid after its pod was deleted")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	t.Logf("bound token rejected %v after its pod was deleted", time.Since(deleted).Round(time.Millisecond))

	// Stop: both processes and their ports gone, nothing left mentioning dir.
	stopStart := time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	t.Logf("stopped in %v", time.Since(stopStart).Round(time.Millisecond))
	for _, pid := range []int{apiPid, etcdPid} {
		if proc.Alive(pid) {
			cl, _ := proc.Cmdline(pid)
			t.Errorf("pid %d still alive: %s", pid, cl)
		}
	}
	if left := proc.Find(dir); len(left) > 0 {
		t.Errorf("processes mentioning %s left behind: %v", dir, left)
	}
	for _, u := range []string{c.URL(), c.EtcdURL()} {
		addr := u[strings.Index(u, "//")+2:]
		if proc.PortOpen(addr) {
			t.Errorf("%s still open after Stop", addr)
		}
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestMissingBinaries: Start fails fast, saying how to build them.
func TestMissingBinaries(t *testing.T) {
	_, err := kubeapi.Start(context.Background(), t.TempDir(), kubeapi.Options{BinDir: t.TempDir()})
	if !errors.Is(err, kubeapi.ErrNoBinaries) || !strings.Contains(err.Error(), "scripts/build-kube.sh") {
		t.Fatalf("Start with an empty bin dir: %v", err)
	}
}

// keepLogs copies dir's *.log files to $PULLWATCH_TEST_OUT/<test>/ when the
// test fails (CI keeps that directory). Register it right after t.TempDir.
func keepLogs(t *testing.T, dir string) {
	t.Cleanup(func() {
		out := os.Getenv("PULLWATCH_TEST_OUT")
		if out == "" || !t.Failed() {
			return
		}
		dst := filepath.Join(out, strings.ReplaceAll(t.Name(), "/", "_"))
		logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		if err := os.MkdirAll(dst, 0o755); err != nil {
			t.Logf("keep logs: %v", err)
			return
		}
		for _, l := range logs {
			if b, err := os.ReadFile(l); err == nil {
				_ = os.WriteFile(filepath.Join(dst, filepath.Base(l)), b, 0o644)
			}
		}
		t.Logf("logs kept in %s", dst)
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
