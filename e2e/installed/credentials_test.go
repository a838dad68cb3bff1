package installed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/kubenode"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// TestTokenCredentialProviderInstalled: a kubelet credential provider that
// needs the pod's service account token (KEP-4412 tokenAttributes) is the
// only way to the box's private registry. The real kubelet pulls with it (the
// plugin refuses a request without a token, and logs that it got one); the
// installed agent, which cannot mint that token, must not call the image
// unauthorized: it says unknown and names the provider.
func TestTokenCredentialProviderInstalled(t *testing.T) {
	c := installed(t)
	if c.Private == nil {
		t.Fatal("the box has no private registry (Options.CredentialProvider)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	node := c.Nodes[0]
	image := c.PrivateImage()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kep4412", Namespace: "default", Labels: map[string]string{"app": "kep4412"}},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": node.Name()},
			TerminationGracePeriodSeconds: ptr.To(int64(0)),
			// No imagePullSecrets, no node keyring: only the provider.
			Containers: []corev1.Container{{Name: "app", Image: image, ImagePullPolicy: corev1.PullIfNotPresent}},
		},
	}
	// Afterwards the image leaves the node too: an image pullwatch cannot
	// judge stays out of the later scenarios' alerts.
	t.Cleanup(func() {
		deleteAndWait(t, c, "default", "app=kep4412")
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := removeImage(cctx, node, kubecluster.PrivateRepo); err != nil {
			t.Errorf("remove %s from %s: %v", image, node.Name(), err)
		}
	})
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPhase(ctx, t, c, pod.Name, corev1.PodRunning)
	log, err := os.ReadFile(node.HostPath(kubecluster.CredentialProviderDir + "/requests.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), " token") {
		t.Fatalf("the kubelet pulled %s but never gave the provider a service account token; its requests:\n%s", image, log)
	}
	t.Logf("the kubelet pulled %s with provider %s and the pod's token (plugin log: %q)", image, kubecluster.CredentialProviderName, strings.TrimSpace(string(log)))

	waitQuery(ctx, t, fmt.Sprintf(`max(pullwatch_image_nodes{image=%q,status="unknown"})`, image), func(v float64) bool { return v >= 1 }, "the private image unknown on its node")
	res, err := prom.Query(ctx, fmt.Sprintf(`max_over_time(pullwatch_image_nodes{image=%q,status=~"unauthorized|forbidden"}[10m])`, image))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range res {
		if s.Value > 0 {
			t.Errorf("the agent called %s %s on %v nodes: a false alarm for an image the kubelet pulls", image, s.Labels["status"], s.Value)
		}
	}

	// The reason, as an operator reads it on the node.
	agent, err := agentPodOn(ctx, c, node.Name())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir(), "kubectl"), "--kubeconfig="+c.Kubeconfig,
		"-n", kubecluster.Namespace, "exec", agent, "--", "/pullwatch-agent", "check", "-o", "json")
	run, err := agentcheck.Run(cmd)
	if err != nil {
		t.Fatal(err)
	}
	rep := run.JSON(t)
	var found bool
	for _, im := range rep.Images {
		if im.Image != image {
			continue
		}
		found = true
		t.Logf("pullwatch-agent check on %s: %s %s: %s", node.Name(), image, im.Status.Word(), im.Reason)
		if im.Status.Word() != "unknown" || !strings.Contains(im.Reason, kubecluster.CredentialProviderName) {
			t.Errorf("check says %s (%s), want unknown naming provider %s", im.Status.Word(), im.Reason, kubecluster.CredentialProviderName)
		}
	}
	if !found {
		t.Errorf("%s not in the check of %s:\n%s", image, node.Name(), run.Stdout)
	}
}

// agentPodOn is the name of the agent pod on node.
func agentPodOn(ctx context.Context, c *kubecluster.Cluster, node string) (string, error) {
	var name string
	err := proc.Poll(ctx, time.Minute, time.Second, func() error {
		pods, err := c.Client().CoreV1().Pods(kubecluster.Namespace).List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=pullwatch-agent", FieldSelector: "spec.nodeName=" + node,
		})
		if err != nil {
			return err
		}
		if len(pods.Items) != 1 {
			return fmt.Errorf("%d agent pods on %s", len(pods.Items), node)
		}
		name = pods.Items[0].Name
		return nil
	})
	return name, err
}

// removeImage removes every reference of repo (its tag and its digest
// reference) from the node's image store, as crictl rmi does: the agent
// lists the node's cached images by either.
func removeImage(ctx context.Context, node *kubenode.Node, repo string) error {
	ctr := []string{"ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io", "images"}
	out, err := node.Exec(ctx, append(ctr, "ls", "-q")...)
	if err != nil {
		return err
	}
	var refs []string
	for _, ref := range strings.Fields(out) {
		if strings.Contains(ref, "/"+repo+":") || strings.Contains(ref, "/"+repo+"@") {
			refs = append(refs, ref)
		}
	}
	if len(refs) == 0 {
		return nil
	}
	_, err = node.Exec(ctx, append(append(ctr, "rm"), refs...)...)
	return err
}
