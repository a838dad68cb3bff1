package installed

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// TestRiskProvenByTheKubelet is the proof risk metrics exist for: during a
// registry outage, a pod pullwatch marks at risk (pull policy Always),
// deleted and created again, really ends in ErrImagePull/ImagePullBackOff
// on its real kubelet; a pod it calls safe (cached, IfNotPresent) really
// starts again.
func TestRiskProvenByTheKubelet(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	node := c.Nodes[0]
	for _, repo := range []string{"risk/always", "risk/cached"} {
		if _, err := c.PushSleeper(ctx, repo, "1"); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(name, repo string, policy corev1.PullPolicy) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": "risk"}},
			Spec: corev1.PodSpec{
				NodeSelector:                  map[string]string{"kubernetes.io/hostname": node.Name()},
				TerminationGracePeriodSeconds: ptr.To(int64(0)),
				Containers:                    []corev1.Container{{Name: "app", Image: c.Registry.Ref(repo, "1"), ImagePullPolicy: policy}},
			},
		}
	}
	pods := []*corev1.Pod{pod("always", "risk/always", corev1.PullAlways), pod("cached", "risk/cached", corev1.PullIfNotPresent)}
	cl := c.Client().CoreV1().Pods("default")
	create := func() {
		t.Helper()
		for _, p := range pods {
			if _, err := cl.Create(ctx, p.DeepCopy(), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() { deleteAndWait(t, c, "default", "app=risk") })
	create()
	for _, p := range pods {
		waitPhase(ctx, t, c, p.Name, corev1.PodRunning)
	}
	// Healthy first: both images available from the node, nothing at risk.
	for _, repo := range []string{"risk/always", "risk/cached"} {
		// (deploy/ keeps per-node image series for failing images only:
		// the cluster-wide count by status says it.)
		waitQuery(ctx, t, fmt.Sprintf(`max(pullwatch_image_nodes{image=%q,status="available"})`, c.Registry.Ref(repo, "1")),
			func(v float64) bool { return v >= 1 }, repo+" available")
	}
	waitEmpty(ctx, t, `pullwatch_container_at_risk{namespace="default",pod=~"always|cached"}`, "a risk pod at risk before the outage")
	stopped := time.Now()

	for _, r := range []*registry.Registry{c.Registry, c.Mirror} {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
		defer restart(t, r)
	}
	// A replica's series carries the container's own pod label (the
	// scrape honors it).
	waitQuery(ctx, t, `count(max by (pod, reason) (pullwatch_container_at_risk{namespace="default",pod="always",reason="pull_always"}))`,
		func(v float64) bool { return v == 1 }, "the Always pod at risk")
	waitEmpty(ctx, t, `pullwatch_container_at_risk{namespace="default",pod="cached"}`, "the cached IfNotPresent pod at risk")
	marked := time.Now()
	t.Logf("the Always pod marked at risk %s after the registry and its mirror stopped", marked.Sub(stopped).Round(time.Second))

	deleteAndWait(t, c, "default", "app=risk")
	create()
	waitPhase(ctx, t, c, "cached", corev1.PodRunning)
	// app=risk matches both pods; the cached one is Running, so the pod
	// failing to pull is the Always one.
	reason := waitPullFails(ctx, t, c, "default", "app=risk")
	t.Logf("marked at risk, then recreated: kubelet says %s (%s after pullwatch marked it)", reason, time.Since(marked).Round(time.Second))
	t.Logf("marked safe (cached, IfNotPresent), then recreated: Running on %s during the outage", node.Name())
}

// waitPhase waits until pod default/name is in phase.
func waitPhase(ctx context.Context, t *testing.T, c *kubecluster.Cluster, name string, phase corev1.PodPhase) {
	t.Helper()
	if err := proc.Poll(ctx, 2*time.Minute, time.Second, func() error {
		p, err := c.Client().CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != phase {
			return fmt.Errorf("pod %s is %s, want %s", name, p.Status.Phase, phase)
		}
		return nil
	}); err != nil {
		out, _ := c.Kubectl(ctx, "describe", "pod", name)
		t.Fatalf("%v\n%s", err, out)
	}
}
