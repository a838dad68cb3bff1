package credentials

import (
	"context"
	"errors"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
)

// Chain asks its sources in the kubelet's order and returns what they
// found, in that order: the pods' pull secrets, then the node keyring,
// then credential provider plugins (NewChain puts them so). A credential
// found twice (same username and secret) is kept once, at its first place.
// A source that fails is named in the joined error; the others' answers
// are still returned, so the caller probes with them.
type Chain []Provider

// NewChain is the kubelet's order over the sources that are on; nil ones
// (a source switched off) are left out.
func NewChain(pullSecrets *PullSecrets, nodeKeyring *NodeKeyring, plugins *Plugins) Chain {
	var c Chain
	if pullSecrets != nil {
		c = append(c, pullSecrets)
	}
	if nodeKeyring != nil {
		c = append(c, nodeKeyring)
	}
	if plugins != nil {
		c = append(c, plugins)
	}
	return c
}

// Lookup implements Provider.
func (c Chain) Lookup(ctx context.Context, ref imageref.Ref, pods []Pod) ([]Credential, error) {
	type id struct{ user, secret string }
	seen := map[id]bool{}
	var out []Credential
	var errs []error
	for _, src := range c {
		creds, err := src.Lookup(ctx, ref, pods)
		if err != nil {
			errs = append(errs, err)
		}
		for _, cr := range creds {
			k := id{cr.Username, cr.Secret}
			if !seen[k] {
				seen[k] = true
				out = append(out, cr)
			}
		}
	}
	return out, errors.Join(errs...)
}

// TokenProviders is a Provider that knows the credential provider plugins
// it cannot run because they need the pod's service account token
// (KEP-4412 tokenAttributes).
type TokenProviders interface {
	// NeedsServiceAccountToken names the first such provider whose
	// matchImages match ref ("" when none does).
	NeedsServiceAccountToken(ref imageref.Ref) string
}

// NeedsServiceAccountToken implements TokenProviders.
func (c Chain) NeedsServiceAccountToken(ref imageref.Ref) string {
	for _, src := range c {
		if tp, ok := src.(TokenProviders); ok {
			if name := tp.NeedsServiceAccountToken(ref); name != "" {
				return name
			}
		}
	}
	return ""
}
