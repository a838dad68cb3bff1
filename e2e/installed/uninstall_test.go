package installed

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// TestRemoveLeavesNothing (last in this package): kubectl delete -k removes
// every object, and no pullwatch container is left on any node.
func TestRemoveLeavesNothing(t *testing.T) {
	c := installed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := c.Kubectl(ctx, "delete", "-k", c.OverlayDir(), "--wait=true"); err != nil {
		t.Fatal(err)
	}
	if err := proc.Poll(ctx, 3*time.Minute, time.Second, func() error {
		_, err := c.Client().CoreV1().Namespaces().Get(ctx, kubecluster.Namespace, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("namespace %s still there (%v)", kubecluster.Namespace, err)
	}); err != nil {
		t.Fatal(err)
	}
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
