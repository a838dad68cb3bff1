// Package footprint measures the agent on real parts (issue 14's
// benchmarks): the real pullwatch-agent daemon on a real containerd holding
// 200 images behind a real TLS registry with token auth — its RSS and CPU
// (/proc) and the requests it sends per round (the registry's access log
// and the token server's own record) — and, in one run against one such
// registry and 500 images, pullwatch's prober side by side with the way the
// exporter people use today checks (go-containerregistry's remote.Head per
// image, one after another, a new transport each time).
//
// Only request counts are asserted; times, RSS and CPU are logged and
// written down in docs/benchmarks.md. By default the footprint runs short
// (--interval 10s, 2 measured rounds); PULLWATCH_FOOTPRINT=full runs the
// documented measurement (--interval 1m, 5 measured rounds, ~7 minutes).
package footprint

import (
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }
