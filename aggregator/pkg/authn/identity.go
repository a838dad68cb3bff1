// Package authn decides who is on the other end of an agent's stream and of
// an HTTP request: a ServiceAccount token verified with TokenReview, bound to
// the node its pod runs on.
package authn

import "context"

// Identity is who sent a request, as verified by the aggregator.
type Identity struct {
	// Node is the node the caller speaks for: from the token's pod binding
	// when Verified, from the report's own claim when auth is off.
	Node string
	// ServiceAccount is "namespace/name" of the caller's token ("" when auth is off).
	ServiceAccount string
	// Verified is true only when a token was checked against the Kubernetes API.
	Verified bool
}

type identityKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the identity WithIdentity put in ctx.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}
