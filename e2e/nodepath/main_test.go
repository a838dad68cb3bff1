// Package nodepath_test checks that the agent takes a node's path to its
// registries as the runtime takes it: hosts.toml mirrors, TLS, token auth,
// tag drift, platforms, the node's resolver and proxy; containerd itself
// pulls to confirm each verdict.
package nodepath_test

import (
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }
