package authn

import (
	"context"
	"testing"

	"google.golang.org/grpc/metadata"
)

// FuzzPeekClaims: a token is whatever a caller sends; reading its claims
// (to name a refusal and bound the cache) must never panic, and a token
// that is not three dot-separated parts has none.
func FuzzPeekClaims(f *testing.F) {
	f.Add("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE4MDAwMDAwMDAsImF1ZCI6WyJwdWxsd2F0Y2giXX0.c2ln")
	f.Add("a.eyJhdWQiOiJwdWxsd2F0Y2gifQ.b")
	f.Add("a.eyJleHAiOiJzb29uIn0.b")
	f.Add("..")
	f.Add("not a token")
	f.Fuzz(func(t *testing.T, token string) {
		c := peekClaims(token)
		if exp, ok := c.expiry(); ok && !c.valid {
			t.Fatalf("expiry %v from invalid claims", exp)
		}
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
		_ = bearerToken(ctx)
	})
}
