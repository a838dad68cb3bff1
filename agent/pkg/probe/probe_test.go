package probe

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullwatch/pullwatch/agent/pkg/credentials"
	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

const (
	testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	secret     = "s3cr3t-PASSWORD"
)

// registry is a small fake registry for edge cases the real one cannot be
// made to produce (429, 5xx, odd media types, hostile token servers). The
// real docker-registry is exercised in the e2e tests.
type registry struct {
	manifestStatus int
	pingStatus     int // /v2/'s answer when neither bearer nor basic
	mediaType      string
	header         http.Header
	bearer         bool // /v2/ demands a bearer token from /token
	basic          bool
	tokenStatus    int
	tokenBody      string
	tokenCalls     atomic.Int32
	headCalls      atomic.Int32
	sleep          time.Duration
	lastAuth       atomic.Value
}

func (r *registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	time.Sleep(r.sleep)
	switch {
	case req.URL.Path == "/token":
		r.tokenCalls.Add(1)
		if r.tokenStatus != 0 {
			w.WriteHeader(r.tokenStatus)
			return
		}
		body := r.tokenBody
		if body == "" {
			body = `{"token":"tok-123","expires_in":300}`
		}
		fmt.Fprint(w, body)
	case req.URL.Path == "/v2/":
		switch {
		case r.bearer:
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test-registry"`, req.Host))
			w.WriteHeader(http.StatusUnauthorized)
		case r.basic:
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
		case r.pingStatus != 0:
			w.WriteHeader(r.pingStatus)
		}
	case strings.Contains(req.URL.Path, "/manifests/"):
		if req.Method != http.MethodHead {
			http.Error(w, "only HEAD expected", http.StatusMethodNotAllowed)
			return
		}
		r.headCalls.Add(1)
		r.lastAuth.Store(req.Header.Get("Authorization"))
		if (r.bearer && req.Header.Get("Authorization") != "Bearer tok-123") || (r.basic && !strings.HasPrefix(req.Header.Get("Authorization"), "Basic ")) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		for k, v := range r.header {
			w.Header()[k] = v
		}
		mt := r.mediaType
		if mt == "" {
			mt = "application/vnd.oci.image.manifest.v1+json"
		}
		w.Header().Set("Content-Type", mt)
		w.Header().Set("Docker-Content-Digest", testDigest)
		code := r.manifestStatus
		if code == 0 {
			code = http.StatusOK
		}
		w.WriteHeader(code)
	default:
		http.NotFound(w, req)
	}
}

func mustRef(t testing.TB, s string) imageref.Ref {
	r, err := imageref.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestProbeClassification(t *testing.T) {
	huge := `{"token":"` + strings.Repeat("x", 2<<20) + `"}`
	tests := []struct {
		name       string
		reg        *registry
		creds      []credentials.Credential
		timeout    time.Duration
		want       pb.ImageStatus
		wantReason string
	}{
		{"available", &registry{}, nil, 0, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "manifest found"},
		{"absent", &registry{manifestStatus: 404}, nil, 0, pb.ImageStatus_IMAGE_STATUS_ABSENT, "manifest unknown"},
		{"bearer anonymous", &registry{bearer: true}, nil, 0, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "manifest found"},
		{"token refused", &registry{bearer: true, tokenStatus: 401}, []credentials.Credential{{Username: "u", Secret: secret, Source: "node_keyring"}}, 0, pb.ImageStatus_IMAGE_STATUS_UNAUTHORIZED, "refused the credentials"},
		{"token forbidden", &registry{bearer: true, tokenStatus: 403}, nil, 0, pb.ImageStatus_IMAGE_STATUS_FORBIDDEN, "denied"},
		{"token server down", &registry{bearer: true, tokenStatus: 503}, nil, 0, pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, "503"},
		{"token response too large", &registry{bearer: true, tokenBody: huge}, nil, 0, pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "over 1 MiB"},
		{"token response garbage", &registry{bearer: true, tokenBody: "<html>"}, nil, 0, pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "decode token"},
		{"basic without creds", &registry{basic: true}, nil, 0, pb.ImageStatus_IMAGE_STATUS_UNAUTHORIZED, "401"},
		{"basic with creds", &registry{basic: true}, []credentials.Credential{{Username: "x", Secret: "wrong", Source: "pull_secret"}, {Username: "u", Secret: secret, Source: "node_keyring"}}, 0, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "manifest found"},
		{"forbidden", &registry{manifestStatus: 403}, nil, 0, pb.ImageStatus_IMAGE_STATUS_FORBIDDEN, "403"},
		// The runtime never asks /v2/ before a pull: an odd answer there
		// (a gateway's 403, a proxy's 404) leaves the verdict to the
		// manifest, as the fidelity matrix's gateway cases show.
		{"403 on /v2/ and on the manifest", &registry{pingStatus: 403, manifestStatus: 403}, nil, 0, pb.ImageStatus_IMAGE_STATUS_FORBIDDEN, "403"},
		{"404 on /v2/, manifest found", &registry{pingStatus: 404}, nil, 0, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "manifest found"},
		{"rate limited", &registry{manifestStatus: 429, header: http.Header{"Retry-After": {"30"}}}, nil, 0, pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED, "retry after 30"},
		{"server error", &registry{manifestStatus: 502}, nil, 0, pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, "502"},
		{"teapot", &registry{manifestStatus: 418}, nil, 0, pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "418"},
		{"schema1", &registry{mediaType: "application/vnd.docker.distribution.manifest.v1+prettyjws"}, nil, 0, pb.ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT, "media type"},
		{"not acceptable", &registry{manifestStatus: 406}, nil, 0, pb.ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT, "406"},
		{"timeout", &registry{sleep: 300 * time.Millisecond}, nil, 100 * time.Millisecond, pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, "timeout after 100ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.reg)
			defer srv.Close()
			p := New(Options{Timeout: tt.timeout})
			res := p.Probe(context.Background(), Request{Ref: mustRef(t, "127.0.0.1:5000/demo/app:v1"), Endpoints: []hosts.Endpoint{{URL: srv.URL + "/v2", Role: hosts.RoleUpstream}}, Credentials: tt.creds})
			if res.Status != tt.want || !strings.Contains(res.Reason, tt.wantReason) {
				t.Fatalf("got %s %q, want %s containing %q", res.Status.Word(), res.Reason, tt.want.Word(), tt.wantReason)
			}
			if strings.Contains(res.Reason, secret) || strings.Contains(fmt.Sprint(res), secret) {
				t.Fatalf("secret leaked into result: %+v", res)
			}
			if len(res.Endpoints) != 1 || res.Endpoints[0].LatencySeconds <= 0 {
				t.Fatalf("endpoint results %+v", res.Endpoints)
			}
			if tt.want == pb.ImageStatus_IMAGE_STATUS_AVAILABLE && res.Digest != testDigest {
				t.Errorf("digest = %q", res.Digest)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res := New(Options{}).Probe(context.Background(), Request{Ref: mustRef(t, addr+"/demo/app:v1"), Endpoints: []hosts.Endpoint{{URL: "http://" + addr + "/v2", Role: hosts.RoleUpstream}}, Credentials: nil})
	if res.Status != pb.ImageStatus_IMAGE_STATUS_UNREACHABLE || !strings.Contains(res.Reason, "connection refused") || strings.Contains(res.Reason, "/v2/") {
		t.Fatalf("got %s %q", res.Status.Word(), res.Reason)
	}
}

func TestTokenCacheAndDigestPinned(t *testing.T) {
	reg := &registry{bearer: true}
	srv := httptest.NewServer(reg)
	defer srv.Close()
	p := New(Options{})
	eps := []hosts.Endpoint{{URL: srv.URL + "/v2", Role: hosts.RoleUpstream}}
	for i := 0; i < 3; i++ {
		if res := p.Probe(context.Background(), Request{Ref: mustRef(t, "127.0.0.1:5000/demo/app@"+testDigest), Endpoints: eps, Credentials: nil}); res.Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
			t.Fatalf("probe %d: %s %s", i, res.Status.Word(), res.Reason)
		}
	}
	if n := reg.tokenCalls.Load(); n != 1 {
		t.Errorf("token fetched %d times, want 1 (cached)", n)
	}
	// Another repository needs another scope, so another token.
	p.Probe(context.Background(), Request{Ref: mustRef(t, "127.0.0.1:5000/demo/other:v1"), Endpoints: eps, Credentials: nil})
	if n := reg.tokenCalls.Load(); n != 2 {
		t.Errorf("token fetched %d times, want 2", n)
	}
}

func TestMirrorOrderAndDegraded(t *testing.T) {
	good := httptest.NewServer(&registry{})
	defer good.Close()
	missing := httptest.NewServer(&registry{manifestStatus: 404})
	defer missing.Close()
	ref := mustRef(t, "127.0.0.1:5000/demo/app:v1")
	tests := []struct {
		name     string
		eps      []hosts.Endpoint
		want     pb.ImageStatus
		degraded bool
	}{
		{"mirror serves, upstream lacks it", []hosts.Endpoint{{URL: good.URL + "/v2", Role: hosts.RoleMirror, Host: "127.0.0.1:5000"}, {URL: missing.URL + "/v2", Role: hosts.RoleUpstream}}, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true},
		{"mirror and upstream serve", []hosts.Endpoint{{URL: good.URL + "/v2", Role: hosts.RoleMirror, Host: "127.0.0.1:5000"}, {URL: good.URL + "/v2", Role: hosts.RoleUpstream}}, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false},
		{"fallback to upstream", []hosts.Endpoint{{URL: missing.URL + "/v2", Role: hosts.RoleMirror, Host: "127.0.0.1:5000"}, {URL: good.URL + "/v2", Role: hosts.RoleUpstream}}, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true},
		{"none", []hosts.Endpoint{{URL: missing.URL + "/v2", Role: hosts.RoleMirror}, {URL: missing.URL + "/v2", Role: hosts.RoleUpstream}}, pb.ImageStatus_IMAGE_STATUS_ABSENT, false},
		{"no endpoints", nil, pb.ImageStatus_IMAGE_STATUS_UNKNOWN, false},
		{"bad endpoint", []hosts.Endpoint{{URL: "::nope", Role: hosts.RoleUpstream}}, pb.ImageStatus_IMAGE_STATUS_UNKNOWN, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := New(Options{}).Probe(context.Background(), Request{Ref: ref, Endpoints: tt.eps, Credentials: nil})
			if res.Status != tt.want || res.Degraded != tt.degraded || len(res.Endpoints) != len(tt.eps) {
				t.Fatalf("got %s degraded=%v endpoints=%d (%s)", res.Status.Word(), res.Degraded, len(res.Endpoints), res.Reason)
			}
		})
	}
}

func TestPerHostConcurrency(t *testing.T) {
	var inFlight, maxInFlight atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := maxInFlight.Load()
			if n <= m || maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	}))
	defer srv.Close()
	p := New(Options{PerHostConcurrency: 2})
	eps := []hosts.Endpoint{{URL: srv.URL + "/v2", Role: hosts.RoleUpstream}}
	done := make(chan struct{})
	for i := 0; i < 8; i++ {
		go func(i int) {
			p.Probe(context.Background(), Request{Ref: mustRef(t, fmt.Sprintf("127.0.0.1:5000/demo/app%d:v1", i)), Endpoints: eps, Credentials: nil})
			done <- struct{}{}
		}(i)
	}
	for i := 0; i < 8; i++ {
		<-done
	}
	if m := maxInFlight.Load(); m > 2 {
		t.Errorf("%d requests in flight at once, limit 2", m)
	}
}

func FuzzParseChallenge(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull"`,
		`Basic realm="x"`,
		`Bearer realm=`,
		`Digest nonce="1", Bearer realm="r"`,
		`bearer REALM="R"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ch := parseChallenge(http.Header{"Www-Authenticate": {s}})
		if ch.scheme == schemeBearer && ch.realm == "" {
			t.Fatalf("bearer challenge without realm from %q", s)
		}
	})
}

func TestSkippedEndpointsAndHeaders(t *testing.T) {
	var gotHeader atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHeader.Store(r.Header.Get("X-Mirror-Token"))
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	}))
	defer srv.Close()
	ref := mustRef(t, "127.0.0.1:5000/demo/app:v1")
	eps := []hosts.Endpoint{
		{URL: "http://127.0.0.1:1/v2", Role: hosts.RoleMirror, Skip: "endpoint lacks the resolve capability, which a tag needs"},
		{URL: srv.URL + "/v2", Role: hosts.RoleUpstream, Header: http.Header{"X-Mirror-Token": {"abc"}}},
	}
	res := New(Options{}).Probe(context.Background(), Request{Ref: ref, Endpoints: eps, Credentials: nil})
	if res.Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE || res.Degraded {
		t.Fatalf("got %s degraded=%v: %s", res.Status.Word(), res.Degraded, res.Reason)
	}
	if !res.Endpoints[0].Skipped || res.Endpoints[0].LatencySeconds != 0 || !strings.Contains(res.Endpoints[0].Reason, "resolve capability") {
		t.Errorf("skipped endpoint result %+v", res.Endpoints[0])
	}
	if gotHeader.Load() != "abc" {
		t.Errorf("hosts.toml header not sent: %v", gotHeader.Load())
	}
	res = New(Options{}).Probe(context.Background(), Request{Ref: ref, Endpoints: eps[:1], Credentials: nil})
	if res.Status != pb.ImageStatus_IMAGE_STATUS_UNKNOWN || !strings.Contains(res.Reason, "would ask no endpoint") {
		t.Errorf("all skipped: %s %q", res.Status.Word(), res.Reason)
	}
}

func TestRateLimitBackoff(t *testing.T) {
	reg := &registry{manifestStatus: 429, header: http.Header{"Retry-After": {"120"}, "Ratelimit-Remaining": {"0;w=21600"}}}
	srv := httptest.NewServer(reg)
	defer srv.Close()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := New(Options{Now: func() time.Time { return now }})
	eps := []hosts.Endpoint{{URL: srv.URL + "/v2", Role: hosts.RoleUpstream}}
	ref := mustRef(t, "127.0.0.1:5000/demo/app:v1")
	res := p.Probe(context.Background(), Request{Ref: ref, Endpoints: eps, Credentials: nil})
	if res.Status != pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED || res.Endpoints[0].RateLimitRemaining != "0;w=21600" {
		t.Fatalf("first probe: %s %+v", res.Status.Word(), res.Endpoints[0])
	}
	// Within Retry-After the registry is not asked again.
	now = now.Add(time.Minute)
	res = p.Probe(context.Background(), Request{Ref: mustRef(t, "127.0.0.1:5000/demo/other:v1"), Endpoints: eps, Credentials: nil})
	if res.Status != pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED || !strings.Contains(res.Reason, "backing off") || reg.headCalls.Load() != 1 {
		t.Fatalf("during backoff: %s %q, %d HEADs", res.Status.Word(), res.Reason, reg.headCalls.Load())
	}
	now = now.Add(2 * time.Minute)
	reg.manifestStatus = 200
	if res = p.Probe(context.Background(), Request{Ref: ref, Endpoints: eps, Credentials: nil}); res.Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE || reg.headCalls.Load() != 2 {
		t.Fatalf("after backoff: %s, %d HEADs", res.Status.Word(), reg.headCalls.Load())
	}
}

// indexRegistry serves one OCI index for every manifest request.
func indexRegistry(t *testing.T, body string, lie bool) (*httptest.Server, *atomic.Int32) {
	var gets atomic.Int32
	d := digest.FromString(body).String()
	if lie {
		d = testDigest
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		w.Header().Set("Docker-Content-Digest", d)
		if r.Method == http.MethodGet {
			gets.Add(1)
			fmt.Fprint(w, body)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &gets
}

func TestPlatformCheck(t *testing.T) {
	index := func(plats ...string) string {
		var ms []string
		for _, p := range plats {
			os, arch, _ := strings.Cut(p, "/")
			ms = append(ms, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":1,"platform":{"os":%q,"architecture":%q}}`, testDigest, os, arch))
		}
		return `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Join(ms, ",") + `]}`
	}
	node := &ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	tests := []struct {
		name       string
		body       string
		lie        bool
		nodeDigest string
		want       pb.ImageStatus
		reason     string
		gets       int32
	}{
		{"has the platform", index("linux/amd64", "linux/arm64"), false, "", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "manifest found", 1},
		{"missing the platform", index("linux/amd64", "linux/s390x"), false, "", pb.ImageStatus_IMAGE_STATUS_PLATFORM_MISSING, "no manifest for this node's platform linux/arm64/v8 (it has linux/amd64, linux/s390x)", 1},
		{"node already runs this index", index("linux/s390x"), false, "same", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "manifest found", 0},
		{"body does not match digest", index("linux/s390x"), true, "", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "platform check failed: index body has digest", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, gets := indexRegistry(t, tt.body, tt.lie)
			nd := tt.nodeDigest
			if nd == "same" {
				nd = digest.FromString(tt.body).String()
			}
			p := New(Options{Platform: node})
			req := Request{Ref: mustRef(t, "127.0.0.1:5000/demo/multi:v1"), Endpoints: []hosts.Endpoint{{URL: srv.URL + "/v2", Role: hosts.RoleUpstream}}, NodeDigest: nd}
			for i := 0; i < 2; i++ { // the second round uses the cache
				res := p.Probe(context.Background(), req)
				if res.Status != tt.want || !strings.Contains(res.Reason, tt.reason) {
					t.Fatalf("got %s %q, want %s with %q", res.Status.Word(), res.Reason, tt.want.Word(), tt.reason)
				}
			}
			if tt.lie {
				return // a failed check is not cached
			}
			if gets.Load() != tt.gets {
				t.Errorf("%d GETs, want %d", gets.Load(), tt.gets)
			}
		})
	}
}
