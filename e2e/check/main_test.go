// Package check_test runs `pullwatch-agent check` on a real node (containerd
// with its CRI plugin, docker-registry): the statuses it promises, its
// JSON and its table, and its exit codes.
package check_test

import (
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }
