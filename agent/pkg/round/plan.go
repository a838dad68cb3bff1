package round

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/time/rate"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Default per-registry token bucket of the agent's own: at most
// DefaultRegistryRate manifest checks a second to one registry host, in
// bursts of DefaultRegistryBurst. It applies with or without an
// aggregator (check included), so one node with hundreds of images on one
// registry never fires them all in the same second.
const (
	DefaultRegistryRate  = 10.0
	DefaultRegistryBurst = 20
)

// Plan is what a round may send to registries: the agent's own token
// bucket per registry host and, while the aggregator shards probes, the
// latest Directive's ProbeAssignments (which images other nodes HEAD for
// this one, this node's share of each registry's cluster-wide budget, and
// holds after a 429). Safe for concurrent use; a nil *Plan allows
// everything.
type Plan struct {
	rate  rate.Limit
	burst int
	now   func() time.Time

	mu        sync.Mutex
	local     map[string]*rate.Limiter // registry host → the agent's own bucket
	active    func() bool
	delegated map[string]bool          // ProbeKeyString
	shares    map[string]*rate.Limiter // registry host → cluster budget share
	holds     map[string]time.Time
	phase     time.Duration
	hasPhase  bool
}

// NewPlan returns a Plan with a token bucket of perSecond (≤ 0: none) and
// burst per registry host and no assignments.
func NewPlan(perSecond float64, burst int) *Plan {
	r := rate.Limit(perSecond)
	if perSecond <= 0 {
		r = rate.Inf
	}
	return &Plan{rate: r, burst: max(burst, 1), now: time.Now, local: map[string]*rate.Limiter{}}
}

// SetActive makes the assignments count only while active reports true
// (the stream to the aggregator is up): without an aggregator to share
// results, the node checks every image itself.
func (p *Plan) SetActive(active func() bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active = active
}

// Apply replaces the assignments with the aggregator's (nil clears them).
// interval is the agent's, over which budgets are spread.
func (p *Plan) Apply(pa *pb.ProbeAssignments, interval time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delegated = map[string]bool{}
	p.holds = map[string]time.Time{}
	old := p.shares
	p.shares = map[string]*rate.Limiter{}
	p.hasPhase = false
	if pa == nil {
		return
	}
	for _, k := range pa.GetDelegated() {
		p.delegated[k.KeyString()] = true
	}
	for _, b := range pa.GetBudgets() {
		if n := b.GetRequestsPerInterval(); n > 0 && interval > 0 {
			lim := rate.Limit(n / interval.Seconds())
			burst := max(1, int(n))
			if l := old[b.GetHost()]; l != nil && l.Limit() == lim && l.Burst() == burst {
				p.shares[b.GetHost()] = l // keep its tokens
			} else {
				p.shares[b.GetHost()] = rate.NewLimiter(lim, burst)
			}
		}
		if b.GetHoldUntil() != nil {
			p.holds[b.GetHost()] = b.GetHoldUntil().AsTime()
		}
	}
	if pa.GetPhase() != nil {
		p.phase, p.hasPhase = pa.GetPhase().AsDuration(), true
	}
}

func (p *Plan) activeLocked() bool { return p.active == nil || p.active() }

// Delegated reports whether another node HEADs key for this one.
func (p *Plan) Delegated(key string) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.activeLocked() && p.delegated[key]
}

// Phase is where in its interval the aggregator wants this node's rounds
// to start, when it said.
func (p *Plan) Phase() (time.Duration, bool) {
	if p == nil {
		return 0, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.phase, p.hasPhase && p.activeLocked()
}

func (p *Plan) localLocked(host string) *rate.Limiter {
	l := p.local[host]
	if l == nil {
		l = rate.NewLimiter(p.rate, p.burst)
		p.local[host] = l
	}
	return l
}

// Wait takes a token from host's own bucket, waiting for one: it paces
// every manifest check of the node.
func (p *Plan) Wait(ctx context.Context, host string) error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	l := p.localLocked(host)
	p.mu.Unlock()
	return l.Wait(ctx)
}

// Admit reports whether an image checked before may be HEADed at host this
// round under the cluster-wide budget: no hold after a 429, and a token of
// this node's share. When not, the round reports the image's last result.
func (p *Plan) Admit(host string) bool {
	if p == nil {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.activeLocked() {
		return true
	}
	if until, ok := p.holds[host]; ok && p.now().Before(until) {
		return false
	}
	if s := p.shares[host]; s != nil && !s.Allow() {
		return false
	}
	return true
}

// NextRound is how long the daemon waits before its next round. With a
// phase from the aggregator, until the next time within one interval that
// is phase past a multiple of the interval (so the cluster's rounds spread
// evenly over it); without, the interval less up to a tenth of it at
// random, so agents started together drift apart. Never longer than the
// interval: an outage is still reported within one interval.
func (p *Plan) NextRound(now time.Time, interval time.Duration) time.Duration {
	if interval <= 0 {
		return interval
	}
	if phase, ok := p.Phase(); ok {
		phase %= interval
		since := time.Duration(now.UnixNano()) % interval
		wait := (phase - since + interval) % interval
		if wait == 0 {
			wait = interval
		}
		return wait
	}
	return interval - rand.N(interval/10+1)
}
