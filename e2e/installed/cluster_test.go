package installed

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// TestNodesAreRealKubelets: every node registered itself with its zone, and
// a pod scheduled by kube-scheduler runs on the pod network, its logs read
// through the API server from the kubelet.
func TestNodesAreRealKubelets(t *testing.T) {
	c := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes, err := c.Client().CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != len(c.Nodes) {
		t.Fatalf("%d Node objects, want %d", len(nodes.Items), len(c.Nodes))
	}
	for i, n := range nodes.Items {
		if got, want := n.Labels["topology.kubernetes.io/zone"], kubecluster.Zone(i+1); got != want {
			t.Errorf("node %s zone %q, want %q", n.Name, got, want)
		}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: "default"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name:  "hello",
				Image: c.Registry.Ref(kubecluster.PauseRepo, "1"),
			}},
		},
	}
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = proc.Poll(ctx, 2*time.Minute, time.Second, func() error {
		p, err := c.Client().CoreV1().Pods("default").Get(ctx, "hello", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return &podNotRunning{p}
		}
		return nil
	})
	if err != nil {
		out, _ := c.Kubectl(ctx, "describe", "pod", "hello")
		t.Fatalf("pod: %v\n%s", err, out)
	}
	out, err := c.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
	t.Logf("%s", out)
	if err != nil || !strings.Contains(out, "10.244.") { // kubecluster.ClusterCIDR
		t.Fatalf("pod without a pod-network address: %v", err)
	}
}

type podNotRunning struct{ p *corev1.Pod }

func (e *podNotRunning) Error() string {
	return "pod " + e.p.Name + " is " + string(e.p.Status.Phase) + " on " + e.p.Spec.NodeName
}
