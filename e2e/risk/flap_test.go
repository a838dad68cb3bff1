package risk_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// flakyRegistry is a reverse proxy in front of a real registry that, once
// armed, answers every other manifest request with 503 (the registry
// cannot serve: unreachable).
type flakyRegistry struct {
	*httptest.Server
	armed            atomic.Bool
	manifests, fails atomic.Int64
}

func newFlakyRegistry(t *testing.T, upstream *registry.Registry) *flakyRegistry {
	t.Helper()
	target, err := url.Parse(upstream.URL())
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyRegistry{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = upstream.Transport()
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.armed.Load() && strings.Contains(r.URL.Path, "/manifests/") {
			if f.manifests.Add(1)%2 == 1 {
				f.fails.Add(1)
				http.Error(w, "flaky: every other manifest request fails", http.StatusServiceUnavailable)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *flakyRegistry) Addr() string { return strings.TrimPrefix(f.URL, "http://") }

// TestFlapDamping: a registry that fails every other probe. With the
// default --confirm 2 the aggregator never sees the image as anything but
// available; with --confirm 1 (no damping) the same registry shows the
// flaps, so the proxy really flaps.
func TestFlapDamping(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	reg := lab.Registry(t, "flap-registry", registry.Options{})
	if _, err := registry.PushSleeper(ctx, reg, "flap/app", "v1"); err != nil {
		t.Fatal(err)
	}
	flaky := newFlakyRegistry(t, reg)
	ref := flaky.Addr() + "/flap/app:v1"
	node := l.Node()
	node.Pull(t, ref, nil)
	t.Cleanup(func() { node.RemoveImages(t, ref) })

	for _, tc := range []struct {
		confirm   string
		wantFlaps bool
	}{{"2", false}, {"1", true}} {
		t.Run("confirm="+tc.confirm, func(t *testing.T) {
			flaky.armed.Store(false)
			grpcAddr, httpAddr, agg := l.StartAggregator(t)
			agent := l.StartAgent(t, grpcAddr, []string{"NODE_NAME=flap-node"}, "--interval", "1s", "--confirm", tc.confirm, "--events=false")
			metricsURL := "http://" + httpAddr + "/metrics"
			available := fmt.Sprintf(`pullwatch_node_image_status{image=%q,node="flap-node",status="available"} 1`, ref)
			lab.WaitFor(t, 60*time.Second, "the image available", func() (bool, string) {
				_, body := lab.HTTPGet(metricsURL)
				return strings.Contains(body, available), lab.GrepLines(body, "pullwatch_node_image_status")
			}, agent, agg)

			flaky.armed.Store(true)
			startFails := flaky.fails.Load()
			var notAvailable []string
			deadline := time.Now().Add(15 * time.Second)
			for time.Now().Before(deadline) {
				_, body := lab.HTTPGet(metricsURL)
				for _, line := range strings.Split(lab.GrepLines(body, "pullwatch_node_image_status{"), "\n") {
					if strings.Contains(line, fmt.Sprintf("image=%q", ref)) && !strings.Contains(line, `status="available"`) {
						notAvailable = append(notAvailable, line)
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
			fails := flaky.fails.Load() - startFails
			t.Logf("--confirm %s: %d manifest requests failed in 15s (every other one); the aggregator saw %d non-available samples",
				tc.confirm, fails, len(notAvailable))
			if fails < 5 {
				t.Fatalf("only %d failed manifest requests: the registry did not flap", fails)
			}
			switch {
			case !tc.wantFlaps && len(notAvailable) > 0:
				t.Errorf("a blip reached the aggregator despite --confirm %s:\n%s", tc.confirm, strings.Join(notAvailable, "\n"))
			case tc.wantFlaps && len(notAvailable) == 0:
				t.Errorf("without damping the flaps should show; none did (the proxy does not flap probes?)")
			}
		})
	}
}
