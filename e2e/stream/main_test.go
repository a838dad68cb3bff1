// Package stream_test runs the agent daemon (`pullwatch-agent run`)
// against a real aggregator: its stream, its own endpoints, containerd
// events triggering rounds, a real Prometheus scraping the aggregator.
package stream_test

import (
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }
