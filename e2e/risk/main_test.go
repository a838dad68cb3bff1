// Package risk_test checks what pullwatch says about risk on the real
// parts: the real agent on the lab's containerd with a real pod, its Pod
// and Node objects in a real kube-apiserver, the real aggregator with the
// shipped RBAC. Which containers would fail to (re)start when the registry
// goes away (cached with IfNotPresent: no; pull policy Always: yes; the
// cached image removed: yes), how many nodes a new replica would fail on,
// the RegistryReachable node condition and its Events, since-times that
// survive an agent restart, and flap damping in front of a registry that
// fails every other probe.
package risk_test

import (
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }
