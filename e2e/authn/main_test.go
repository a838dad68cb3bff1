// Package authn_test checks who may report to the aggregator and who may
// read it, against a real kube-apiserver: agents' pod-bound ServiceAccount
// tokens (minted with TokenRequest for pods on two nodes) verified with
// TokenReview, reports for another node refused, TLS on the gRPC listener
// with a rotated certificate, and /metrics behind TokenReview and
// SubjectAccessReview with the shipped RBAC.
package authn_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

// TestMain runs the tests with the lab (lab.Run), then stops the
// kube-apiserver they share.
func TestMain(m *testing.M) {
	code := lab.Run(m)
	if shared.kube != nil {
		if err := shared.kube.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop kube-apiserver: %v\n", err)
		}
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}
