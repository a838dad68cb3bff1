package probe

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
)

// BenchmarkProbe measures one image's probe against a registry on
// loopback that asks for a bearer token: after the first round the ping
// and the token come from the caches, so this is the steady-state cost of
// a HEAD per image. Reported in docs/benchmarks.md.
func BenchmarkProbe(b *testing.B) {
	srv := httptest.NewServer(&registry{bearer: true})
	defer srv.Close()
	p := New(Options{PerHostConcurrency: 8})
	eps := []hosts.Endpoint{{URL: srv.URL + "/v2", Role: hosts.RoleUpstream}}
	refs := make([]Request, 50)
	for i := range refs {
		refs[i] = Request{Ref: mustRef(b, fmt.Sprintf("127.0.0.1:5000/bench/app%d:v1", i)), Endpoints: eps}
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if res := p.Probe(ctx, refs[i%len(refs)]); res.Status.Word() != "available" {
				b.Errorf("probe: %s %s", res.Status.Word(), res.Reason)
				return
			}
			i++
		}
	})
}
