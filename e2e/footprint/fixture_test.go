package footprint

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
	"github.com/pullwatch/pullwatch/e2e/harness/tokenserver"
)

const (
	pusher, pusherPassword = "pusher", "footprint-push-secret"
	// tagsPerRepo: 200 images are 20 repositories of 10 tags, 500 are
	// 50 of 10 — a token scope per repository, as on a real node.
	tagsPerRepo = 10
	// tokenLifetime is the token server's expires_in (Docker Hub's is 300 s).
	tokenLifetime = 5 * time.Minute
)

// tokenRegistry starts a token server (anonymous pull granted, pusher may
// push) and a real TLS docker-registry that trusts it, for this test.
func tokenRegistry(t *testing.T, name string) (*tokenserver.Server, *registry.Registry) {
	t.Helper()
	// The realm is HTTPS too: go-containerregistry refuses a plain-HTTP
	// realm for a registry it reached over TLS.
	ts, err := tokenserver.Start(t.TempDir(), tokenserver.Options{Users: map[string]string{pusher: pusherPassword}, Lifetime: tokenLifetime, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ts.Close)
	reg := lab.Registry(t, name, registry.Options{TLS: true, Token: ts.TokenAuth()})
	t.Logf("token server: realm %s, service %s, tokens live %s", ts.Realm(), ts.Service(), tokenLifetime)
	return ts, reg
}

// hostsTOML is the node's certs.d hosts.toml for reg: the registry as the
// server, its one endpoint, trusting the registry's CA and the token
// server's (containerd fetches tokens with the host's TLS settings, and so
// does the agent). The empty [host] table is for containerd before 1.7,
// which otherwise rejects the file (see e2e/nodepath); a [host] table for
// the server's own URL would list the URL twice, and the agent, which asks
// every endpoint the runtime would, would HEAD each image twice.
func hostsTOML(ts *tokenserver.Server, reg *registry.Registry) string {
	return fmt.Sprintf("server = %q\nca = [%q, %q]\n\n[host]\n", reg.URL(), reg.CAFile(), ts.CAFile())
}

// newTransport is a new HTTP transport that trusts the registry's and the
// token server's CAs and sends go-containerregistry's requests for the
// registry (plain HTTP for a loopback address, by its rules) over HTTPS.
func newTransport(t *testing.T, ts *tokenserver.Server, reg *registry.Registry) *httpsTransport {
	t.Helper()
	pool := x509.NewCertPool()
	for _, f := range []string{reg.CAFile(), ts.CAFile()} {
		pem, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pool.AppendCertsFromPEM(pem)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &httpsTransport{host: reg.Addr(), Transport: tr}
}

type httpsTransport struct {
	host string
	*http.Transport
}

func (t *httpsTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && req.URL.Host == t.host {
		req = req.Clone(req.Context())
		req.URL.Scheme = "https"
	}
	return t.Transport.RoundTrip(req)
}

// image is one reference of the benchmark: repo:tag on the registry.
type image struct{ repo, tag, ref string }

// images names n distinct images: prefix/app-NN:vT, tagsPerRepo tags per
// repository.
func images(reg *registry.Registry, prefix string, n int) []image {
	out := make([]image, n)
	for i := range out {
		repo, tag := fmt.Sprintf("%s/app-%02d", prefix, i/tagsPerRepo), fmt.Sprintf("v%d", i%tagsPerRepo)
		out[i] = image{repo: repo, tag: tag, ref: reg.Ref(repo, tag)}
	}
	return out
}

func repoCount(imgs []image) int {
	seen := map[string]bool{}
	for _, im := range imgs {
		seen[im.repo] = true
	}
	return len(seen)
}

// parallel runs do for each image, workers at a time, and fails the test
// with the first error.
func parallel(t *testing.T, imgs []image, workers int, do func(image) error) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	work := make(chan image)
	for range workers {
		wg.Go(func() {
			for im := range work {
				if err := do(im); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for _, im := range imgs {
		work <- im
	}
	close(work)
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
}

// push pushes a tiny image of its own (its own digest) for each reference.
func push(t *testing.T, ts *tokenserver.Server, reg *registry.Registry, imgs []image) {
	t.Helper()
	start := time.Now()
	tr := newTransport(t, ts, reg)
	defer tr.CloseIdleConnections()
	parallel(t, imgs, 8, func(im image) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		img, err := registry.BuildImage(im.repo, im.tag, registry.ImageOptions{})
		if err != nil {
			return err
		}
		ref, err := name.ParseReference(im.ref)
		if err != nil {
			return err
		}
		opts := append(reg.RemoteOptions(ctx, pusher, pusherPassword), remote.WithTransport(tr))
		if err := remote.Write(ref, img, opts...); err != nil {
			return fmt.Errorf("push %s: %w", im.ref, err)
		}
		return nil
	})
	t.Logf("pushed %d images (%d repositories) in %s", len(imgs), repoCount(imgs), time.Since(start).Round(time.Millisecond))
}

// pull has the node's containerd pull every image through CRI, as the
// kubelet would (anonymously: the token server grants anonymous pulls).
func pull(t *testing.T, node *lab.Node, imgs []image) {
	t.Helper()
	start := time.Now()
	parallel(t, imgs, 8, func(im image) error { return node.RuntimePull(im.ref, nil) })
	t.Logf("containerd pulled %d images in %s", len(imgs), time.Since(start).Round(time.Millisecond))
}

// requests counts what a client sent the registry, by kind.
type requests struct {
	Heads, HeadsNot200 int // manifest HEADs, and those not answered 200
	ManifestGets       int
	Pings              int // GET /v2/
	Other              int // blobs, anything else
	Tokens             int // token requests (at the token server)
}

func (r requests) registryTotal() int { return r.Heads + r.ManifestGets + r.Pings + r.Other }
func (r requests) total() int         { return r.registryTotal() + r.Tokens }

func (r requests) String() string {
	return fmt.Sprintf("HEAD manifest %d (not 200: %d), GET manifest %d, GET /v2/ %d, other %d, token %d; %d in all",
		r.Heads, r.HeadsNot200, r.ManifestGets, r.Pings, r.Other, r.Tokens, r.total())
}

// mark is a point in the registry's access log and the token server's
// record; since counts what a client (by user agent prefix) sent after it.
type mark struct {
	logOffset int64
	tokens    int
}

func markNow(t *testing.T, ts *tokenserver.Server, reg *registry.Registry) mark {
	t.Helper()
	offset, err := reg.LogOffset()
	if err != nil {
		t.Fatal(err)
	}
	return mark{logOffset: offset, tokens: len(ts.Requests())}
}

// between counts the requests sent by clients whose user agent starts
// with uaPrefix from a to b.
func between(t *testing.T, ts *tokenserver.Server, reg *registry.Registry, a, b mark, uaPrefix string) requests {
	t.Helper()
	var r requests
	reqs, _, err := reg.Accesses(a.logOffset, b.logOffset)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range reqs {
		if !strings.HasPrefix(req.UserAgent, uaPrefix) {
			continue
		}
		switch {
		case req.Method == "HEAD" && strings.Contains(req.Path, "/manifests/"):
			r.Heads++
			if req.Status != "200" {
				r.HeadsNot200++
			}
		case req.Method == "GET" && strings.Contains(req.Path, "/manifests/"):
			r.ManifestGets++
		case req.Method == "GET" && req.Path == "/v2/":
			r.Pings++
		default:
			r.Other++
		}
	}
	for _, tr := range ts.Requests()[a.tokens:b.tokens] {
		if strings.HasPrefix(tr.UserAgent, uaPrefix) {
			r.Tokens++
		}
	}
	return r
}

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }
