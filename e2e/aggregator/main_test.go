// Package aggregator_test checks the aggregator on the lab node's reports
// and synthetic ones: its status page in a real headless Chromium, and its
// Kubernetes view (workloads, zones, deleted nodes, refused unknown ones)
// against a real kube-apiserver with the shipped RBAC.
package aggregator_test

import (
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }
