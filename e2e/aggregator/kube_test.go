package aggregator_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

// aggApplyRBAC creates the aggregator's ClusterRole and ClusterRoleBinding
// exactly as deploy/aggregator.yaml has them, and returns a kubeconfig for
// the identity they bind (the aggregator's ServiceAccount), so that the
// test proves the shipped RBAC is enough.
func aggApplyRBAC(t *testing.T, ctx context.Context, c *kubeapi.Cluster) string {
	t.Helper()
	root, err := checkout.Root()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "aggregator.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role *rbacv1.ClusterRole
	var binding *rbacv1.ClusterRoleBinding
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("deploy/aggregator.yaml: %v", err)
		}
		switch head.Kind {
		case "ClusterRole":
			role = &rbacv1.ClusterRole{}
			err = yaml.UnmarshalStrict([]byte(doc), role)
		case "ClusterRoleBinding":
			binding = &rbacv1.ClusterRoleBinding{}
			err = yaml.UnmarshalStrict([]byte(doc), binding)
		}
		if err != nil {
			t.Fatalf("deploy/aggregator.yaml %s: %v", head.Kind, err)
		}
	}
	if role == nil || binding == nil || len(binding.Subjects) != 1 || binding.Subjects[0].Kind != rbacv1.ServiceAccountKind {
		t.Fatalf("deploy/aggregator.yaml: want a ClusterRole and a ClusterRoleBinding to one ServiceAccount, got %+v %+v", role, binding)
	}
	cs := c.Client()
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := binding.Subjects[0]
	// RBAC matches a ServiceAccount subject by user name; a client
	// certificate with that name and the ServiceAccount groups is the
	// same identity.
	kc, err := c.KubeconfigFor("system:serviceaccount:"+sa.Namespace+":"+sa.Name,
		[]string{"system:serviceaccounts", "system:serviceaccounts:" + sa.Namespace, "system:authenticated"})
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

func controllerRef(apiVersion, kind, name string, uid string) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: name, UID: types.UID(uid), Controller: &yes}
}

// TestAggregatorKubernetes runs the aggregator against a real
// kube-apiserver with the RBAC of deploy/aggregator.yaml: compatibility
// metrics name the workload behind each container (Pod → ReplicaSet →
// Deployment, Pod → Job → CronJob), zones come from the Node objects and
// make a zone-scope diagnosis, a node deleted from the cluster is dropped,
// and reports for a node the API does not know are refused and counted.
func TestAggregatorKubernetes(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := lab.Kube(ctx, t)
	kubeconfig := aggApplyRBAC(t, ctx, c)
	cs := c.Client()

	// Zones a and b; the lab node is kube-node-a1.
	for _, n := range []kubeapi.NodeOptions{
		{Name: "kube-node-a1", Labels: map[string]string{kubeapi.LabelZone: "zone-a"}},
		{Name: "kube-node-a2", Labels: map[string]string{kubeapi.LabelZone: "zone-a"}},
		{Name: "kube-node-b1", Labels: map[string]string{kubeapi.LabelZone: "zone-b"}},
		{Name: "kube-node-gone", Labels: map[string]string{kubeapi.LabelZone: "zone-b"}},
	} {
		if _, err := c.CreateNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	s := l.StartScenario(t, "aggkube", "kube-node-a1", "--kubeconfig", kubeconfig)

	// A Deployment's ReplicaSet and a CronJob's Job, with a pod each on the
	// lab node: created in the API (nothing reconciles them) and run in
	// containerd as the kubelet would.
	const ns = "shop"
	if err := c.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	rs, err := cs.AppsV1().ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-5d4f8", OwnerReferences: []metav1.OwnerReference{controllerRef("apps/v1", "Deployment", "web", "6f1c1b1e-0000-4000-8000-000000000001")}},
		Spec: appsv1.ReplicaSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: s.OK}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	job, err := cs.BatchV1().Jobs(ns).Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "nightly-29000", OwnerReferences: []metav1.OwnerReference{controllerRef("batch/v1", "CronJob", "nightly", "6f1c1b1e-0000-4000-8000-000000000002")}},
		Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "main", Image: s.Gone}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods := []struct {
		name, container, image string
		owner                  metav1.OwnerReference
	}{
		{"web-5d4f8-x2x9q", "app", s.OK, controllerRef("apps/v1", "ReplicaSet", rs.Name, string(rs.UID))},
		{"nightly-29000-7kq2z", "main", s.Gone, controllerRef("batch/v1", "Job", job.Name, string(job.UID))},
	}
	for _, p := range pods {
		created, err := c.CreatePod(ctx, kubeapi.PodOptions{
			Namespace: ns, Name: p.name, NodeName: "kube-node-a1",
			Containers:      []corev1.Container{{Name: p.container, Image: p.image}},
			OwnerReferences: []metav1.OwnerReference{p.owner},
		})
		if err != nil {
			t.Fatal(err)
		}
		// The runtime's pod is the API's (its UID): compat series count
		// only pods the API has on the reporting node.
		sandbox, err := l.Containerd.RunPod(ctx, containerd.PodSpec{Namespace: ns, Name: p.name, UID: string(created.UID),
			Containers: []containerd.ContainerSpec{{Name: p.container, Image: p.image}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = l.Containerd.RemovePod(ctx, sandbox)
		})
	}

	// The other nodes, over the aggregator's gRPC API: a2 (zone-a) cannot
	// reach the stopped registry either, b1 (zone-b) can. No zone labels
	// from these agents: the zones must come from the Node objects.
	lab.ReportSnapshot(t, s.GRPCAddr, s.SyntheticNode(t, "kube-node-a2", "", false))
	lab.ReportSnapshot(t, s.GRPCAddr, s.SyntheticNode(t, "kube-node-b1", "", true))
	lab.ReportSnapshot(t, s.GRPCAddr, s.SyntheticNode(t, "kube-node-gone", "", true))
	if err := lab.SendSnapshot(s.GRPCAddr, s.SyntheticNode(t, "kube-node-unknown", "", true)); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), `"kube-node-unknown" is not a Node of this cluster`) {
		t.Errorf("snapshot for a node the API does not have: %v, want FailedPrecondition", err)
	}

	want := []*regexp.Regexp{
		regexp.MustCompile(regexp.QuoteMeta(fmt.Sprintf(`k8s_image_availability_exporter_available{container="app",image=%q,kind="deployment",name="web",namespace="shop"} 1`, s.OK))),
		regexp.MustCompile(regexp.QuoteMeta(fmt.Sprintf(`k8s_image_availability_exporter_absent{container="main",image=%q,kind="cronjob",name="nightly",namespace="shop"} 1`, s.Gone))),
		// Zone a (a1 and a2) lost the stopped registry; zone b reaches it.
		regexp.MustCompile(fmt.Sprintf(`(?m)^pullwatch_registry_failure\{endpoint="[^"]+",registry=%q,scope="zone"\} 2$`, s.DeadRegistry)),
		regexp.MustCompile(fmt.Sprintf(`(?m)^pullwatch_image_failure\{image=%q,registry=%q,scope="zone"\} 2$`, s.Dead, s.DeadRegistry)),
		regexp.MustCompile(`(?m)^pullwatch_nodes\{state="unregistered"\} 0$`),
		regexp.MustCompile(`(?m)^pullwatch_reports_rejected_total\{reason="unknown_node"\} 1$`),
		regexp.MustCompile(`(?m)^pullwatch_nodes\{state="fresh"\} 4$`),
	}
	lab.WaitFor(t, 60*time.Second, "workloads, zone diagnosis and node states on /metrics", func() (bool, string) {
		_, body := lab.HTTPGet(s.MetricsURL())
		for _, w := range want {
			if !w.MatchString(body) {
				return false, "missing " + w.String() + "\n" + lab.GrepLines(body, "k8s_image_availability_exporter_a") + "\n" +
					lab.GrepLines(body, "pullwatch_registry_failure") + "\n" + lab.GrepLines(body, "pullwatch_nodes")
			}
		}
		return true, ""
	}, s.Agg, s.Agent)

	// The scenario's own pod is on the node's runtime but not in the API:
	// a node's word alone mints no workload series for it.
	if _, body := lab.HTTPGet(s.MetricsURL()); strings.Contains(body, fmt.Sprintf(`name=%q,namespace=%q`, s.Pod, s.Namespace)) {
		t.Errorf("compatibility series for %s/%s, a pod the API does not have:\n%s", s.Namespace, s.Pod, lab.GrepLines(body, s.Pod))
	}

	// The status page shows the zones, from the API.
	_, page := lab.HTTPGet(s.PageURL())
	for _, w := range []string{`kube-node-a1<small>zone zone-a</small>`, `<small>zones zone-a</small>`} {
		if !strings.Contains(page, w) {
			t.Errorf("status page lacks %q", w)
		}
	}

	// A node deleted from the cluster takes its series with it.
	if err := cs.CoreV1().Nodes().Delete(ctx, "kube-node-gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, 30*time.Second, "kube-node-gone dropped", func() (bool, string) {
		_, body := lab.HTTPGet(s.MetricsURL())
		return !strings.Contains(body, `node="kube-node-gone"`) && strings.Contains(body, `pullwatch_nodes{state="fresh"} 3`),
			lab.GrepLines(body, "pullwatch_node_stale") + "\n" + lab.GrepLines(body, "pullwatch_nodes")
	}, s.Agg)
	if !strings.Contains(s.Agg.LogTail(200), `msg="node deleted from the cluster; dropping its results" node=kube-node-gone`) {
		t.Errorf("the aggregator did not log the node's deletion:\n%s", s.Agg.LogTail(40))
	}
}
