// Package credentials_test checks the pull credentials the agent finds as
// the kubelet would hand them to the runtime: the node keyring (docker
// config.json), a kubelet credential provider plugin, and pods' pull
// secrets read from a real kube-apiserver; and that no password leaks.
package credentials_test

import (
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }
