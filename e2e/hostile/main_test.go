// Package hostile_test runs the real agent against hostile and dying
// registries on loopback (agent/pkg/probe/probetest): every probe ends
// within --probe-timeout with the right status and reason, a round with
// every registry hung ends within twice that, a broken node configuration
// costs only its registry's images, and the aggregator accepts whatever
// the registries answered. FuzzRegistryAnswer drives arbitrary answers
// through probe → report → the aggregator's Validate.
package hostile_test

import (
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }
