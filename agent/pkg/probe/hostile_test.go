package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/netpath"
	"github.com/pullwatch/pullwatch/agent/pkg/probe/probetest"
	"github.com/pullwatch/pullwatch/agent/pkg/report"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// hostileCase is what probing a hostile registry must end with.
type hostileCase struct {
	want       pb.ImageStatus
	wantReason string
}

var hostileCases = map[probetest.Mode]hostileCase{
	probetest.HangHeaders:   {pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, "timeout after"},
	probetest.EndlessBody:   {pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "over 1 MiB"},
	probetest.HugeHeaders:   {pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, "headers exceeded"},
	probetest.RedirectLoop:  {pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, "10 redirects"},
	probetest.WrongDigest:   {pb.ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT, "digest mismatch"},
	probetest.TLSMismatch:   {pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, "certificate"},
	probetest.HangingToken:  {pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, "timeout after"},
	probetest.InvalidUTF8:   {pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "418"},
	probetest.Oversized:     {pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED, "429"},
	probetest.LoopbackRealm: {pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "token realm"},
	probetest.Silent:        {pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, "timeout after"},
}

const pinnedDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// startHostile serves every mode; the endpoint of each, as the runtime's
// configuration would give it to the prober.
func startHostile(t testing.TB, timeout time.Duration) map[probetest.Mode]hosts.Endpoint {
	t.Helper()
	eps := map[probetest.Mode]hosts.Endpoint{}
	for _, m := range probetest.Modes() {
		h, err := probetest.Start(m, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		ep := hosts.Endpoint{URL: h.URL(), Role: hosts.RoleUpstream}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		netpath.Bound(tr, timeout)
		switch m {
		case probetest.TLSMismatch:
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(h.CAPEM)
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		case probetest.LoopbackRealm:
			// The registry under a name that is not on the loopback
			// network (its realm is): every name dials the listener.
			ep.URL = "http://registry.hostile.test:" + portOf(h.Addr) + "/v2"
			tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, h.Addr)
			}
		}
		ep.Client = &http.Client{Transport: tr}
		eps[m] = ep
	}
	return eps
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

func hostileRequest(t testing.TB, m probetest.Mode, ep hosts.Endpoint, round *Round) Request {
	host := strings.TrimPrefix(strings.TrimPrefix(ep.URL, "http://"), "https://")
	host, _, _ = strings.Cut(host, "/")
	return Request{Ref: mustRef(t, host+"/hostile/"+string(m)+"@"+pinnedDigest), Endpoints: []hosts.Endpoint{ep}, Round: round}
}

// TestHostileRegistries: every hostile registry's probe ends within the
// probe timeout with the right status and reason, and its answer
// sanitized goes on the wire.
func TestHostileRegistries(t *testing.T) {
	const timeout = 500 * time.Millisecond
	eps := startHostile(t, timeout)
	p := New(Options{Timeout: timeout})
	for _, m := range probetest.Modes() {
		t.Run(string(m), func(t *testing.T) {
			want := hostileCases[m]
			start := time.Now()
			res := p.Probe(context.Background(), hostileRequest(t, m, eps[m], nil))
			took := time.Since(start)
			// Slack for a busy machine; a probe that is not bounded takes
			// forever (hang modes) or many timeouts.
			if took > timeout+time.Second {
				t.Errorf("probe took %s, --probe-timeout is %s", took, timeout)
			}
			out := res.Outcome.Sanitized()
			if out.Status != want.want || !strings.Contains(out.Reason, want.wantReason) {
				t.Errorf("got %s %.300q, want %s containing %q", out.Status.Word(), out.Reason, want.want.Word(), want.wantReason)
			}
			if !utf8.ValidString(out.Reason) || len(out.Reason) > pb.MaxReason {
				t.Errorf("reason not sanitized: %d bytes, valid UTF-8 %v", len(out.Reason), utf8.ValidString(out.Reason))
			}
			n := report.Node{Node: "node-a", Images: []report.Image{{Image: "x/" + string(m), Outcome: res.Outcome}}}
			if _, err := proto.Marshal(n.Snapshot("test", time.Minute)); err != nil {
				t.Errorf("the report does not encode: %v", err)
			}
			t.Logf("%s in %s: %.200s", out.Status.Word(), took.Round(time.Millisecond), out.Reason)
		})
	}
}

// TestRoundBreaker: with a Round, an endpoint that hung once answers at
// once for the rest of the round, probes queued behind it included, and
// a healthy registry's probes neither wait for it nor lack slots.
func TestRoundBreaker(t *testing.T) {
	const timeout = time.Second
	silent, err := probetest.Start(probetest.Silent, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	good := newRegistryServer(t, &registry{})
	p := New(Options{Timeout: timeout, PerHostConcurrency: 2})
	round := NewRound(4)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest, healthiest time.Duration
	start := time.Now()
	for i := range 80 {
		wg.Go(func() {
			ep := hosts.Endpoint{URL: silent.URL(), Role: hosts.RoleUpstream}
			if i%8 == 0 {
				ep.URL = good + "/v2"
			}
			res := p.Probe(context.Background(), Request{Ref: mustRef(t, fmt.Sprintf("127.0.0.1:5000/app%d:v1", i)), Endpoints: []hosts.Endpoint{ep}, Round: round})
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			if i%8 == 0 {
				healthiest = max(healthiest, took)
				if res.Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
					t.Errorf("healthy image %d: %s %s", i, res.Status.Word(), res.Reason)
				}
				return
			}
			slowest = max(slowest, took)
			if res.Status != pb.ImageStatus_IMAGE_STATUS_UNREACHABLE {
				t.Errorf("hung image %d: %s %s", i, res.Status.Word(), res.Reason)
			}
		})
	}
	wg.Wait()
	t.Logf("70 images of a silent registry done after %s, 10 of a healthy one after %s (probe timeout %s)", slowest, healthiest, timeout)
	// Without the breaker, 70 images at 2 per host would take 35 timeouts.
	if slowest > 2*timeout+time.Second {
		t.Errorf("the silent registry's images took %s, over 2 × the probe timeout", slowest)
	}
	if healthiest > timeout {
		t.Errorf("the healthy registry's images waited %s for the silent one", healthiest)
	}
}

func newRegistryServer(t *testing.T, r *registry) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestHostileHeapFlat probes the hostile registries 1,000 times and
// reports the heap in use after each hundred (after a GC): it must stay
// flat. The numbers are in docs/benchmarks.md:
//
//	cd agent && go test -run TestHostileHeapFlat -v ./pkg/probe/
func TestHostileHeapFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 probes")
	}
	const timeout = 200 * time.Millisecond
	eps := startHostile(t, timeout)
	p := New(Options{Timeout: timeout, PerHostConcurrency: 4})
	modes := probetest.Modes()
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	var first, peak uint64
	sem := make(chan struct{}, 16)
	start := time.Now()
	for batch := range 10 {
		var wg sync.WaitGroup
		for i := range 100 {
			m := modes[(batch*100+i)%len(modes)]
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				res := p.Probe(context.Background(), hostileRequest(t, m, eps[m], nil))
				n := report.Node{Node: "node-a", Images: []report.Image{{Image: "x/" + string(m), Outcome: res.Outcome}}}
				if _, err := proto.Marshal(n.Snapshot("test", time.Minute)); err != nil {
					t.Errorf("%s: the report does not encode: %v", m, err)
				}
			})
		}
		wg.Wait()
		h := heap()
		if batch == 0 {
			first = h
		}
		peak = max(peak, h)
		t.Logf("after %4d probes: heap in use %6.2f MiB, goroutines %d", (batch+1)*100, float64(h)/(1<<20), runtime.NumGoroutine())
	}
	t.Logf("1000 probes of %d hostile registries in %s; heap in use after 100: %.2f MiB, peak after a GC: %.2f MiB",
		len(modes), time.Since(start).Round(time.Millisecond), float64(first)/(1<<20), float64(peak)/(1<<20))
	if peak > first+16<<20 {
		t.Errorf("heap grew from %.2f to %.2f MiB over 1,000 probes", float64(first)/(1<<20), float64(peak)/(1<<20))
	}
}

// TestRoundBreakerPerEntry: a registry listed twice (hosts.toml's
// [host."URL"] with its ca, then server = "URL" without, as containerd
// lists them) is two endpoints with breakers of their own: the second
// entry's x509 failure does not make the first report unreachable for
// the rest of the round.
func TestRoundBreakerPerEntry(t *testing.T) {
	srv := httptest.NewTLSServer(&registry{})
	defer srv.Close()
	p := New(Options{Timeout: 5 * time.Second, PerHostConcurrency: 2})
	round := NewRound(4)
	for i := range 10 {
		eps := []hosts.Endpoint{
			{URL: srv.URL + "/v2", Role: hosts.RoleUpstream, Client: srv.Client()}, // its ca
			{URL: srv.URL + "/v2", Role: hosts.RoleUpstream},                       // the default trust: x509
		}
		res := p.Probe(context.Background(), Request{Ref: mustRef(t, fmt.Sprintf("127.0.0.1:5000/app%d:v1", i)), Endpoints: eps, Round: round})
		if res.Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE || res.Endpoints[0].Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
			t.Fatalf("image %d: %s %s; first entry %s %s", i, res.Status.Word(), res.Reason, res.Endpoints[0].Status.Word(), res.Endpoints[0].Reason)
		}
		if !strings.Contains(res.Endpoints[1].Reason, "certificate") {
			t.Errorf("image %d: second entry %s %q, want its x509 failure", i, res.Endpoints[1].Status.Word(), res.Endpoints[1].Reason)
		}
	}
}

// TestReachHonoursTheBreaker: once an endpoint's breaker is open in the
// round, Reach says it is not reached without pinging it again (each of
// a hung endpoint's delegated images would otherwise wait a timeout).
func TestReachHonoursTheBreaker(t *testing.T) {
	silent, err := probetest.Start(probetest.Silent, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	const timeout = 5 * time.Second
	p := New(Options{Timeout: timeout})
	round := NewRound(4)
	ep := hosts.Endpoint{URL: silent.URL(), Role: hosts.RoleUpstream}
	ref := mustRef(t, "127.0.0.1:5000/app:v1")
	tg, err := p.target(ep, ref)
	if err != nil {
		t.Fatal(err)
	}
	round.trip(breakerKey(tg, 1), failure{status: pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, reason: "timeout"})
	start := time.Now()
	if p.Reach(context.Background(), round, ref, []hosts.Endpoint{ep}) {
		t.Fatal("a hung endpoint was reached")
	}
	if took := time.Since(start); took > timeout/2 {
		t.Errorf("Reach took %s: it pinged the endpoint whose breaker is open", took)
	}
}
