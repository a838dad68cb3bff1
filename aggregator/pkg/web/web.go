// Package web is the aggregator's HTTP side: the status page at /,
// metrics, health and readiness.
package web

import (
	"fmt"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Readiness is what /readyz reports. The zero value is not ready.
type Readiness struct {
	ready atomic.Bool
}

// Set marks the process ready (true) or not (false).
func (r *Readiness) Set(ready bool) { r.ready.Store(ready) }

// Ready reports the current readiness.
func (r *Readiness) Ready() bool { return r.ready.Load() }

// index is served at / when there is no status page.
const index = `pullwatch-aggregator

/metrics  Prometheus metrics
/healthz  liveness
/readyz   readiness (503 until the gRPC listener serves, and while shutting down)
`

// NewHandler returns the HTTP handler: /metrics from gatherer, /healthz,
// /readyz from ready, and status at / (a short text index when status is
// nil). Anything else is 404.
func NewHandler(gatherer prometheus.Gatherer, ready *Readiness, status http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		// Serve what could be gathered even if one collector fails,
		// rather than failing the whole scrape.
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready.Ready() {
			writeText(w, http.StatusOK, "ok\n")
			return
		}
		writeText(w, http.StatusServiceUnavailable, "not ready\n")
	})
	if status != nil {
		mux.Handle("GET /{$}", status)
	} else {
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
			writeText(w, http.StatusOK, index)
		})
	}
	return mux
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprint(w, body)
}

// NewServer returns an http.Server for handler with timeouts suited to
// metrics scrapes and probes.
func NewServer(handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
}

// WithProfiling serves Go's runtime profiles (net/http/pprof) under
// /debug/pprof/ in front of h, for --pprof: measuring where the CPU and
// memory of a large cluster go. Whatever guards h guards them too when it
// wraps the result.
func WithProfiling(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.Handle("/", h)
	return mux
}
