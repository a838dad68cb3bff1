package installed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// registryReachable is the Node condition --node-condition writes
// (aggregator/pkg/nodecondition).
const registryReachable = corev1.NodeConditionType("RegistryReachable")

// waitCondition waits until every Node has the RegistryReachable
// condition True (want) or none has it at all (!want).
func waitCondition(ctx context.Context, t *testing.T, c *kubecluster.Cluster, want bool) {
	t.Helper()
	if err := proc.Poll(ctx, 3*time.Minute, 2*time.Second, func() error {
		nodes, err := c.Client().CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, n := range nodes.Items {
			var cond *corev1.NodeCondition
			for i := range n.Status.Conditions {
				if n.Status.Conditions[i].Type == registryReachable {
					cond = &n.Status.Conditions[i]
				}
			}
			switch {
			case want && (cond == nil || cond.Status != corev1.ConditionTrue):
				return fmt.Errorf("node %s: %s is %v", n.Name, registryReachable, cond)
			case !want && cond != nil:
				return fmt.Errorf("node %s still has %s (%s: %s)", n.Name, registryReachable, cond.Status, cond.Message)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// helmBin is the pinned helm (make helm): $PULLWATCH_HELM_BIN/helm, else
// .cache/helm/bin/helm in the checkout.
func helmBin(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PULLWATCH_HELM_BIN")
	if dir == "" {
		root, err := checkout.Root()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, ".cache", "helm", "bin")
	}
	bin := filepath.Join(dir, "helm")
	if _, err := os.Stat(bin); err != nil {
		proc.SkipOrFail(t, fmt.Sprintf("no helm at %s: run make helm", bin))
	}
	return bin
}
