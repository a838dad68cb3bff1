package lab

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// Kube starts a real kube-apiserver (and etcd) for the test, or skips when
// they are not built (fails with PULLWATCH_REQUIRE_REAL=1); it stops with
// the test.
func Kube(ctx context.Context, t testing.TB) *kubeapi.Cluster {
	t.Helper()
	if _, err := kubeapi.LocateBinaries(""); err != nil {
		if proc.RealRequired() || !errors.Is(err, kubeapi.ErrNoBinaries) {
			t.Fatal(err)
		}
		t.Skipf("no kube-apiserver to test against: %v", err)
	}
	c, err := kubeapi.Start(ctx, filepath.Join(t.TempDir(), "kube"), kubeapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop kube-apiserver: %v", err)
		}
	})
	return c
}
