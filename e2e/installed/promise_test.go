package installed

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/netns"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// TestInstalledOnEveryNode: deploy/ as shipped runs on real kubelets — the
// agent Ready on every node, the aggregator Ready, a real Prometheus finds
// it through the Kubernetes API and sees every node fresh; kubectl logs,
// exec and port-forward reach the pods through the kubelets.
func TestInstalledOnEveryNode(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	want := fmt.Sprint(len(c.Nodes))
	// Two aggregator replicas, each with every node: the same series
	// twice, one per pod.
	waitQuery(ctx, t, `count(pullwatch_agents_connected)`, func(v float64) bool { return v == 2 }, "both aggregator replicas scraped")
	waitQuery(ctx, t, `min(pullwatch_nodes{state="fresh"})`, func(v float64) bool { return fmt.Sprint(v) == want }, "every node fresh on each replica")
	waitQuery(ctx, t, `min(pullwatch_agents_connected)`, func(v float64) bool { return fmt.Sprint(v) == want }, "every agent streaming to each replica")
	waitQuery(ctx, t, `count(up{namespace="pullwatch"} == 1)`, func(v float64) bool { return v >= 1 }, "the aggregator scraped")

	out, err := c.Kubectl(ctx, "-n", kubecluster.Namespace, "logs", "daemonset/pullwatch-agent")
	if err != nil || !strings.Contains(out, "round done") {
		t.Errorf("kubectl logs of an agent: %v\n%s", err, out)
	}
	// exec through the API server and the kubelet (the image has no shell:
	// the binary itself answers).
	out, err = c.Kubectl(ctx, "-n", kubecluster.Namespace, "exec", "deploy/pullwatch-aggregator", "--", "/pullwatch-aggregator", "--help")
	if !strings.Contains(out, "Usage") {
		t.Errorf("kubectl exec into the aggregator: %v\n%s", err, out)
	}
	// port-forward to the Service, as docs/install.md tells users.
	port, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pf := exec.CommandContext(ctx, filepath.Join(c.BinDir(), "kubectl"), "--kubeconfig="+c.Kubeconfig,
		"-n", kubecluster.Namespace, "port-forward", "svc/pullwatch-aggregator", fmt.Sprintf("%d:8080", port))
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pf.Process.Kill(); _ = pf.Wait() }()
	// HTTPS (PULLWATCH_HTTP_TLS), verified with the installed CA.
	tlsConf, err := c.AggregatorTLS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}}
	if err := proc.Poll(ctx, 30*time.Second, 500*time.Millisecond, func() error {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/healthz", port))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/healthz through port-forward: %s", resp.Status)
		}
		return nil
	}); err != nil {
		t.Errorf("kubectl port-forward to the aggregator: %v", err)
	}

	out, err = c.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
	t.Logf("kubectl get pods -A -o wide:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
}

// TestImageGoneBeforeRestartFails is the product's promise on the installed
// system: a Deployment's image is deleted from the registry while its pods
// run; pullwatch reports it absent on each node running it; then a pod is
// deleted and the kubelet really fails with ErrImagePull/ImagePullBackOff.
// It prints the lead time between the two.
func TestImageGoneBeforeRestartFails(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	digest, err := c.PushSleeper(ctx, "shop/web", "1")
	if err != nil {
		t.Fatal(err)
	}
	image := c.Registry.Ref("shop/web", "1")
	ns := "shop"
	cl := c.Client()
	if _, err := cl.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The scenarios after this one start from a quiet box: the failing
	// workload goes away (the cached image stays, no longer in use), and
	// the image comes back to the registry and the mirror. A deleted tag
	// left cached would fail differently in the later scenarios: with the
	// mirror down, containerd 1.x reports the mirror's refused connection
	// over the registry's 404 (docs/node-path.md), and so does the agent.
	t.Cleanup(func() {
		deleteAndWait(t, c, ns, "app=web")
		pctx, pcancel := context.WithTimeout(context.Background(), time.Minute)
		defer pcancel()
		if _, err := c.PushSleeper(pctx, "shop/web", "1"); err != nil {
			t.Errorf("push shop/web:1 back: %v", err)
		}
	})
	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(len(c.Nodes))),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					// One replica per node.
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					TerminationGracePeriodSeconds: ptr.To(int64(2)),
					Containers: []corev1.Container{{
						Name: "web", Image: image,
						// What a :latest tag gets by default: every start pulls.
						ImagePullPolicy: corev1.PullAlways,
					}},
				},
			},
		},
	}
	if _, err := cl.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := proc.Poll(ctx, 2*time.Minute, time.Second, func() error {
		d, err := cl.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.AvailableReplicas != *d.Spec.Replicas {
			return fmt.Errorf("web: %d/%d available", d.Status.AvailableReplicas, *d.Spec.Replicas)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sel := fmt.Sprintf(`pullwatch_node_image_status{image=%q`, image)
	// pullwatch_image_nodes: the shipped default --node-image-series=failing
	// has no per-node series for available images (max: each replica has
	// every node).
	waitQuery(ctx, t, fmt.Sprintf(`max(pullwatch_image_nodes{image=%q,status="available"})`, image), func(v float64) bool { return int(v) == len(c.Nodes) }, "web available on every node")

	if err := c.DeleteImage(ctx, "shop/web", digest); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	waitQuery(ctx, t, `count(max by (node) (`+sel+`,status="absent"}))`, func(v float64) bool { return int(v) == len(c.Nodes) }, "web absent on every node")
	reported := time.Now()
	t.Logf("pullwatch reported the image absent on all %d nodes %s after its deletion", len(c.Nodes), reported.Sub(deleted).Round(time.Second))

	pods, err := cl.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("web pods: %v", err)
	}
	if err := cl.CoreV1().Pods(ns).Delete(ctx, pods.Items[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	reason := waitPullFails(ctx, t, c, ns, "app=web")
	failed := time.Now()
	if !strings.Contains(reason, "not found") {
		t.Errorf("kubelet's reason %q does not say the manifest is not found", reason)
	}
	t.Logf("kubelet: %s", reason)
	t.Logf("LEAD TIME: pullwatch reported the image absent on every node %s after its deletion (the agents' --interval is %s); "+
		"the kubelet's ErrImagePull came %s after that report, on a restart the test made as soon as it saw the report: any later restart fails with the operator already told",
		reported.Sub(deleted).Round(time.Second), "1m", failed.Sub(reported).Round(time.Second))
}

// waitQuery polls Prometheus until promql's first sample satisfies ok.
func waitQuery(ctx context.Context, t *testing.T, promql string, ok func(float64) bool, what string) {
	t.Helper()
	var last string
	err := proc.Poll(ctx, 3*time.Minute, 2*time.Second, func() error {
		s, err := prom.Query(ctx, promql)
		if err != nil {
			return err
		}
		if len(s) == 0 {
			last = "no samples"
			return fmt.Errorf("%s: %s", promql, last)
		}
		last = fmt.Sprint(s[0].Value)
		if !ok(s[0].Value) {
			return fmt.Errorf("%s = %s", promql, last)
		}
		return nil
	})
	if err != nil {
		var seen []string
		if s, qerr := prom.Query(context.Background(), `pullwatch_node_image_status or pullwatch_node_endpoint_up`); qerr == nil {
			for _, x := range s {
				seen = append(seen, fmt.Sprintf("%v %v", x.Labels, x.Value))
			}
		}
		t.Fatalf("%s: %v\nwhat Prometheus has:\n%s", what, err, strings.Join(seen, "\n"))
	}
}

// TestEgressCutBeforePullFails: a node loses its way to the registry;
// pullwatch says so for that node (its endpoint is down there, not on the
// other node) before a pod scheduled there fails to pull an image it has
// not cached.
func TestEgressCutBeforePullFails(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	node := c.Nodes[len(c.Nodes)-1]
	if _, err := c.PushSleeper(ctx, "shop/api", "1"); err != nil {
		t.Fatal(err)
	}
	// The shipped --node-endpoint-series=failing exports a node's endpoint
	// series only while some endpoint of the registry does not answer it:
	// no series with 0 is every endpoint answering.
	down := func(nodes string) string {
		return fmt.Sprintf(`count(pullwatch_node_endpoint_up{node%s,endpoint=~".*%s.*"} == 0) or vector(0)`, nodes, c.Registry.Addr())
	}
	waitQuery(ctx, t, fmt.Sprintf(`max(pullwatch_node_stale{node=%q})`, node.Name()), func(v float64) bool { return v == 0 }, node.Name()+" reporting")
	waitQuery(ctx, t, down(fmt.Sprintf("=%q", node.Name())), func(v float64) bool { return v == 0 }, "the registry up from "+node.Name())

	rule, err := node.NS().Block(ctx, c.RegNS.IP(), 0, netns.Reject)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rule.Remove(context.Background()) }()
	cut := time.Now()
	waitQuery(ctx, t, down(fmt.Sprintf("=%q", node.Name())), func(v float64) bool { return v >= 1 }, "the registry down from "+node.Name())
	reported := time.Now()
	t.Logf("pullwatch reported %s's registry endpoint down %s after its egress was cut", node.Name(), reported.Sub(cut).Round(time.Second))
	waitQuery(ctx, t, down(fmt.Sprintf("!=%q", node.Name())), func(v float64) bool { return v == 0 }, "the registry still up from the other nodes")
	waitQuery(ctx, t, fmt.Sprintf(`max(pullwatch_registry_failure{endpoint=~".*%s.*",scope="node"})`, c.Registry.Addr()), func(v float64) bool { return v == 1 },
		"the failure diagnosed as one node's")

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "default", Labels: map[string]string{"app": "api"}},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"kubernetes.io/hostname": node.Name()},
			Containers:   []corev1.Container{{Name: "api", Image: c.Registry.Ref("shop/api", "1")}},
		},
	}
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteAndWait(t, c, "default", "app=api") })
	reason := waitPullFails(ctx, t, c, "default", "app=api")
	failed := time.Now()
	t.Logf("kubelet on %s: %s", node.Name(), reason)
	t.Logf("LEAD TIME: pullwatch said %s cannot reach the registry %s before the kubelet's pull failed there", node.Name(), failed.Sub(reported).Round(time.Second))
}

// deleteAndWait deletes the pods (and, for a namespace of the test's own,
// the namespace) a test made and waits until they are gone.
func deleteAndWait(t *testing.T, c *kubecluster.Cluster, ns, selector string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := c.Client()
	if ns != "default" {
		_ = cl.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	}
	_ = cl.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}, metav1.ListOptions{LabelSelector: selector})
	if err := proc.Poll(ctx, 3*time.Minute, time.Second, func() error {
		l, err := cl.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		if len(l.Items) > 0 {
			return fmt.Errorf("%d pods left in %s", len(l.Items), ns)
		}
		return nil
	}); err != nil {
		t.Errorf("clean up: %v", err)
	}
}

// waitPullFails waits until a pod in ns matching selector has a container
// waiting in ErrImagePull or ImagePullBackOff, and returns the kubelet's
// reason and message.
func waitPullFails(ctx context.Context, t *testing.T, c *kubecluster.Cluster, ns, selector string) string {
	t.Helper()
	var reason string
	if err := proc.Poll(ctx, 3*time.Minute, time.Second, func() error {
		pods, err := c.Client().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			for _, s := range p.Status.ContainerStatuses {
				if w := s.State.Waiting; w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") {
					reason = w.Reason + ": " + w.Message
					return nil
				}
			}
		}
		return fmt.Errorf("no pod %s in %s failing to pull yet", selector, ns)
	}); err != nil {
		out, _ := c.Kubectl(ctx, "-n", ns, "get", "pods,events")
		t.Fatalf("%v\n%s", err, out)
	}
	return reason
}
