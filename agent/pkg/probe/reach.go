package probe

import (
	"context"

	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
)

// Reach pings every endpoint the runtime would ask for ref (skipped ones
// aside), as a probe's first step does: GET /v2/, cached for pingTTL, no
// manifest request. It reports whether every one answered. It is probe
// sharding's per-node signal (agent/pkg/round): a node that reaches every
// endpoint may leave the manifest HEAD to another node; one that does not
// checks the image itself and so reports its own unreachable. An endpoint
// the prober is backing off from after a 429, or whose breaker in round
// (nil: none) is open, counts as not reached without a ping: a hung
// endpoint costs its delegated images no more than its probes.
func (p *Prober) Reach(ctx context.Context, round *Round, ref imageref.Ref, endpoints []hosts.Endpoint) bool {
	asked := 0
	listed := map[string]int{}
	for _, ep := range endpoints {
		if ep.Skip != "" {
			continue
		}
		asked++
		listed[ep.URL]++
		t, err := p.target(ep, ref)
		if err != nil {
			return false
		}
		if _, down := round.failed(breakerKey(t, listed[ep.URL])); down {
			return false
		}
		if _, backing := p.backingOff(t.base.Host); backing {
			return false
		}
		if !p.reach(ctx, t) {
			return false
		}
	}
	return asked > 0
}

func (p *Prober) reach(ctx context.Context, t target) bool {
	release, err := p.acquire(ctx, t.base.Host, nil)
	if err != nil {
		return false
	}
	defer release()
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	_, err = p.ping(ctx, t)
	return err == nil
}
