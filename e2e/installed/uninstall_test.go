package installed

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// TestRemoveLeavesNothing (last but one in this package): kubectl delete -k removes
// every object, and no pullwatch container is left on any node.
func TestRemoveLeavesNothing(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := c.Kubectl(ctx, "delete", "-k", c.OverlayDir(), "--wait=true"); err != nil {
		t.Fatal(err)
	}
	waitNamespaceGone(ctx, t, c)
	noContainersLeft(ctx, t, c)
}

// waitNamespaceGone waits until the namespace pullwatch is deleted.
func waitNamespaceGone(ctx context.Context, t *testing.T, c *kubecluster.Cluster) {
	t.Helper()
	if err := proc.Poll(ctx, 3*time.Minute, time.Second, func() error {
		_, err := c.Client().CoreV1().Namespaces().Get(ctx, kubecluster.Namespace, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("namespace %s still there (%v)", kubecluster.Namespace, err)
	}); err != nil {
		t.Fatal(err)
	}
}

// noContainersLeft waits until no node has a pullwatch container.
func noContainersLeft(ctx context.Context, t *testing.T, c *kubecluster.Cluster) {
	t.Helper()
	for _, n := range c.Nodes {
		err := proc.Poll(ctx, time.Minute, time.Second, func() error {
			out, err := n.Exec(ctx, "ctr", "--address", "/run/containerd/containerd.sock", "-n", "k8s.io", "containers", "ls")
			if err != nil {
				return err
			}
			if strings.Contains(out, "pullwatch") {
				return fmt.Errorf("%s still has pullwatch containers:\n%s", n.Name(), out)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
}

// TestHelmInstallUpgradeUninstall (after TestRemoveLeavesNothing took the
// kustomize install away, on the same box and Prometheus): the chart,
// deploy/helm/pullwatch, as docs/install.md installs it — helm install
// with the box's images and the node condition on, then helm upgrade with
// changed values (new agent resources: a DaemonSet rollout; one aggregator
// replica), each followed by the kustomize install's checks (every pod
// Ready, every node reporting to every aggregator pod, no alert; during
// the upgrade not even a pending one), then helm uninstall: no object of
// the release or its hooks, no pullwatch container on any node and no
// RegistryReachable condition on any Node is left.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	c := installed(t)
	helm := helmBin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	root, err := checkout.Root()
	if err != nil {
		t.Fatal(err)
	}
	chart := filepath.Join(root, "deploy", "helm", "pullwatch")
	home := t.TempDir()
	runHelm := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, helm, append(args, "--kubeconfig", c.Kubeconfig, "--namespace", kubecluster.Namespace)...)
		cmd.Env = append(os.Environ(), "HOME="+home, "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
		}
		return string(out)
	}
	// Run alone (-run), the kustomize install is still there: it goes first.
	if _, err := c.Client().AppsV1().Deployments(kubecluster.Namespace).Get(ctx, "pullwatch-aggregator", metav1.GetOptions{}); err == nil {
		if _, err := c.Kubectl(ctx, "delete", "-k", c.OverlayDir(), "--wait=true"); err != nil {
			t.Fatal(err)
		}
		waitNamespaceGone(ctx, t, c)
	}
	start := time.Now()
	// The namespace, the aggregator's TLS Secret and CA ConfigMap are the
	// user's (docs/install.md, "Helm": --create-namespace's namespace,
	// docs/security.md's Secret), as with kubectl apply -k.
	if err := c.CreateTLS(ctx); err != nil {
		t.Fatal(err)
	}
	values := []string{
		"--set", "namespace.create=false",
		"--set", "nodeCondition.enabled=true",
		"--set", "agent.image.registry=" + c.Registry.Addr(),
		"--set", "agent.image.repository=pullwatch/pullwatch-agent",
		"--set", "agent.image.tag=" + installedTag,
		"--set", "aggregator.image.registry=" + c.Registry.Addr(),
		"--set", "aggregator.image.repository=pullwatch/pullwatch-aggregator",
		"--set", "aggregator.image.tag=" + installedTag,
	}
	t.Logf("helm install:\n%s", runHelm(append([]string{"install", "pullwatch", chart}, values...)...))
	if err := c.WaitInstalled(ctx, 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	waitFresh(ctx, t, len(c.Nodes))
	waitQuery(ctx, t, `count(pullwatch_agents_connected)`, func(v float64) bool { return v == 2 }, "both aggregator replicas scraped")
	waitQuiet(ctx, t)
	waitCondition(ctx, t, c, true)
	t.Logf("helm install: every pod Ready, every node fresh on both replicas, no alert, %s on every node after %s", registryReachable, time.Since(start).Round(time.Second))

	upgraded := time.Now()
	noAlertDuring(ctx, t, 20*time.Second, func() error {
		runHelm(append([]string{"upgrade", "pullwatch", chart}, append(values,
			"--set", "agent.resources.requests.cpu=25m",
			"--set", "aggregator.replicas=1")...)...)
		if err := c.WaitInstalled(ctx, 5*time.Minute); err != nil {
			return err
		}
		ds, err := c.Client().AppsV1().DaemonSets(kubecluster.Namespace).Get(ctx, "pullwatch-agent", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := ds.Spec.Template.Spec.Containers[0].Resources.Requests.Cpu().String(); got != "25m" {
			return fmt.Errorf("after helm upgrade the agent requests cpu %s, want 25m", got)
		}
		return nil
	})
	waitQuery(ctx, t, `count(pullwatch_agents_connected)`, func(v float64) bool { return v == 1 }, "one aggregator replica scraped")
	waitFresh(ctx, t, len(c.Nodes))
	t.Logf("helm upgrade: the agents rolled, one aggregator replica, every node fresh, no alert even pending, in %s", time.Since(upgraded).Round(time.Second))

	// What the release made (its objects and its hooks), to prove gone.
	manifest := filepath.Join(t.TempDir(), "release.yaml")
	if err := os.WriteFile(manifest, []byte(runHelm("get", "manifest", "pullwatch")+"\n---\n"+runHelm("get", "hooks", "pullwatch")), 0o644); err != nil {
		t.Fatal(err)
	}
	uninstalled := time.Now()
	t.Logf("helm uninstall:\n%s", runHelm("uninstall", "pullwatch", "--wait", "--timeout", "4m"))
	out, err := c.Kubectl(ctx, "get", "-f", manifest, "--ignore-not-found", "-o", "name")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("left after helm uninstall (%v):\n%s", err, out)
	}
	waitCondition(ctx, t, c, false)
	for _, kind := range []string{"clusterroles", "clusterrolebindings"} {
		out, err := c.Kubectl(ctx, "get", kind, "-l", "app.kubernetes.io/part-of=pullwatch", "-o", "name")
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s left after helm uninstall (%v):\n%s", kind, err, out)
		}
	}
	// Then the user's own: the namespace with the TLS Secret.
	if _, err := c.Kubectl(ctx, "delete", "namespace", kubecluster.Namespace, "--wait=true"); err != nil {
		t.Fatal(err)
	}
	waitNamespaceGone(ctx, t, c)
	noContainersLeft(ctx, t, c)
	t.Logf("helm uninstall: nothing left (objects, hooks, containers, %s) after %s; install to uninstall %s", registryReachable, time.Since(uninstalled).Round(time.Second), time.Since(start).Round(time.Second))
}
