// Package registryfront puts a front door before a real registry: a
// listener (on any address, in any network namespace) that forwards to the
// registry, serves TLS with a certificate of the test's own, and can be
// switched, while the registry behind it stays up, to a state a test needs:
// down (nothing listens: connection refused), hanging (it accepts and never
// answers), rate limited (429 with Retry-After on manifests), or serving a
// malformed Docker-Content-Digest. The registry behind it is real; only
// the fault is injected, as a failing network or load balancer would.
package registryfront

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Mode is what the front does with requests.
type Mode string

// The modes.
const (
	Pass        Mode = "up"          // forward every request
	Down        Mode = "down"        // nothing listens: connection refused
	Hang        Mode = "hang"        // accept, read the request, never answer
	RateLimited Mode = "429"         // 429 + Retry-After for manifest requests
	BadDigest   Mode = "bad-digest"  // manifests answered with a Docker-Content-Digest that is no digest
	ServerError Mode = "503"         // 503 for manifest requests
	NoManifests Mode = "404"         // 404 MANIFEST_UNKNOWN for manifest requests (a mirror that lacks everything)
	HangHeader  Mode = "hang-header" // forward the ping, hang on manifests
)

// RetryAfter is what a RateLimited front says.
const RetryAfter = "30"

// BadDigestValue is what a BadDigest front sends.
const BadDigestValue = "sha256:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"

// ListenFunc opens a listener (e.g. netns.Namespace.Listen).
type ListenFunc func(network, addr string) (net.Listener, error)

// Options configure Start.
type Options struct {
	// Listen opens the listener (default net.Listen).
	Listen ListenFunc
	// Addr is host:port to listen on; port 0 picks one (kept across Down).
	Addr string
	// TLS serves HTTPS with this configuration; nil serves plain HTTP.
	TLS *tls.Config
	// Backend is the registry's base URL, e.g. http://127.0.0.1:5000.
	Backend string
	// RequireHeader, "Name: value", makes the front a gateway that answers
	// 403 DENIED to every request without that header (as an API gateway
	// or a registry proxy that wants a key header does), in every mode.
	RequireHeader string
}

// Front is a running front door.
type Front struct {
	opts  Options
	addr  string
	proxy *httputil.ReverseProxy

	mu     sync.Mutex
	mode   Mode
	ln     net.Listener
	srv    *http.Server
	unhang chan struct{} // closed when a hang ends
}

// Start listens and forwards to opts.Backend.
func Start(opts Options) (*Front, error) {
	if opts.Listen == nil {
		opts.Listen = net.Listen
	}
	backend, err := url.Parse(opts.Backend)
	if err != nil || backend.Host == "" {
		return nil, fmt.Errorf("registryfront: backend %q is not a URL", opts.Backend)
	}
	f := &Front{opts: opts, mode: Pass, unhang: make(chan struct{})}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(backend)
			r.Out.Host = backend.Host
		},
		ModifyResponse: f.modify,
		Transport:      &http.Transport{Proxy: nil, DisableKeepAlives: true, ResponseHeaderTimeout: 30 * time.Second},
		ErrorLog:       nil,
	}
	f.addr = opts.Addr
	if err := f.listen(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *Front) listen() error {
	ln, err := f.opts.Listen("tcp", f.addr)
	if err != nil {
		return fmt.Errorf("registryfront: listen on %s: %w", f.addr, err)
	}
	f.addr = ln.Addr().String()
	if f.opts.TLS != nil {
		ln = tls.NewListener(ln, f.opts.TLS)
	}
	f.ln = ln
	// TLS handshake errors (a client without the CA) are the tests'
	// business, not this log's.
	f.srv = &http.Server{Handler: http.HandlerFunc(f.serve), ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func(srv *http.Server, ln net.Listener) { _ = srv.Serve(ln) }(f.srv, ln)
	return nil
}

// Addr is host:port as clients reach it.
func (f *Front) Addr() string { return f.addr }

// URL is the front's base URL (scheme://host:port).
func (f *Front) URL() string {
	if f.opts.TLS != nil {
		return "https://" + f.addr
	}
	return "http://" + f.addr
}

// Mode is the front's mode now.
func (f *Front) Mode() Mode {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mode
}

// Set switches the front to mode: Down closes the listener (and every
// connection), any other reopens it on the same address; a hang in
// progress ends (its connection is closed unanswered).
func (f *Front) Set(mode Mode) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if mode == f.mode {
		return nil
	}
	close(f.unhang)
	f.unhang = make(chan struct{})
	prev := f.mode
	f.mode = mode
	switch {
	case mode == Down:
		return f.closeLocked()
	case prev == Down:
		return f.listen()
	}
	return nil
}

func (f *Front) closeLocked() error {
	if f.srv == nil {
		return nil
	}
	err := f.srv.Close()
	f.srv, f.ln = nil, nil
	return err
}

// Close stops the front.
func (f *Front) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.unhang)
	f.unhang = make(chan struct{})
	return f.closeLocked()
}

func isManifest(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") }

func (f *Front) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	mode, unhang := f.mode, f.unhang
	f.mu.Unlock()
	if name, value, ok := strings.Cut(f.opts.RequireHeader, ":"); ok && r.Header.Get(strings.TrimSpace(name)) != strings.TrimSpace(value) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"errors":[{"code":"DENIED","message":"the gateway wants header %s"}]}`, strings.TrimSpace(name))
		return
	}
	switch {
	case mode == Hang, mode == HangHeader && isManifest(r):
		select {
		case <-unhang:
		case <-r.Context().Done():
		}
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	case mode == RateLimited && isManifest(r):
		w.Header().Set("Retry-After", RetryAfter)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limit reached"}]}`)
		return
	case mode == ServerError && isManifest(r):
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case mode == NoManifests && isManifest(r):
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
		return
	}
	f.proxy.ServeHTTP(w, r)
}

func (f *Front) modify(resp *http.Response) error {
	if f.Mode() == BadDigest && isManifest(resp.Request) && resp.StatusCode == http.StatusOK {
		resp.Header.Set("Docker-Content-Digest", BadDigestValue)
	}
	return nil
}
