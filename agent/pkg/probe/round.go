package probe

import (
	"context"
	"sync"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Round is what the probes of one round share, so that the round
// finishes however many registries hang:
//
//   - the round's probe slots (--concurrency), taken after the endpoint
//     host's own slot (--per-host-concurrency): a probe waiting for a
//     hung host holds no slot a healthy registry's probe could use;
//   - a circuit breaker per endpoint: once an endpoint failed without an
//     HTTP answer (timeout, connect, TLS, DNS) or its /v2/ ping failed,
//     every other probe of it in this round gets that answer at once,
//     without a new dial, including probes already waiting for its slot.
//     The next round asks again;
//   - a canary per endpoint: the first probe of an endpoint in the round
//     goes alone, and takes no round slot (only its host's), while the
//     others wait for it. So a round costs a hung endpoint one probe
//     timeout, however many images it serves and however many endpoints
//     hang at once (their canaries run side by side): 200 images behind
//     dropping firewalls end within one timeout per endpoint an image
//     tries in turn (mirror, then upstream). In-flight probes are bounded
//     by the round's slots plus one canary per endpoint.
//
// A Round is made by the caller for each round (round.Checker) and is safe
// for concurrent use; a nil *Round is no sharing (no global slots, no
// breaker).
type Round struct {
	slots chan struct{}

	mu   sync.Mutex
	down map[string]*breaker
}

type breaker struct {
	open    chan struct{} // closed when tripped
	tripped bool
	// The endpoint's first probe in the round is its canary: the others
	// wait until it has answered (answered is closed) or failed (open).
	canaryTaken bool
	answered    chan struct{}
	isAnswered  bool
	first       failure
}

// failure is an endpoint's first failure in a round: what every later
// probe of it in the round answers, latency included (the time the failed
// attempt took, so that the answer reads as the endpoint's, not as "not
// asked").
type failure struct {
	status   pb.ImageStatus
	reason   string
	code     int
	latency  float64
	terminal bool // the runtime stops at this endpoint (see answer.terminal)
}

// NewRound returns a Round with concurrency probe slots (16 if <= 0).
func NewRound(concurrency int) *Round {
	if concurrency <= 0 {
		concurrency = 16
	}
	return &Round{slots: make(chan struct{}, concurrency), down: map[string]*breaker{}}
}

func (r *Round) breaker(key string) *breaker {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.down[key]
	if !ok {
		b = &breaker{open: make(chan struct{}), answered: make(chan struct{})}
		r.down[key] = b
	}
	return b
}

// failed returns the endpoint's first failure in this round, if any.
func (r *Round) failed(key string) (failure, bool) {
	if r == nil {
		return failure{}, false
	}
	b := r.breaker(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	return b.first, b.tripped
}

// trip records the endpoint's first failure in this round and wakes the
// probes waiting for it.
func (r *Round) trip(key string, f failure) {
	if r == nil {
		return
	}
	b := r.breaker(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if b.tripped {
		return
	}
	b.tripped, b.first = true, f
	close(b.open)
}

// tripped is closed once the endpoint's breaker trips (never for nil).
func (r *Round) tripped(key string) <-chan struct{} {
	if r == nil {
		return nil
	}
	return r.breaker(key).open
}

// canary makes the caller the endpoint's canary (true) when no probe of
// it has been made this round; otherwise it returns the channels to wait
// on: answered (the canary got an HTTP answer, or ended otherwise) and
// tripped. A nil Round makes every probe a canary.
func (r *Round) canary(key string) (bool, <-chan struct{}, <-chan struct{}) {
	if r == nil {
		return true, nil, nil
	}
	b := r.breaker(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !b.canaryTaken {
		b.canaryTaken = true
		return true, nil, nil
	}
	return false, b.answered, b.open
}

// answered lets the probes waiting for the endpoint's canary go on.
func (r *Round) answered(key string) {
	if r == nil {
		return
	}
	b := r.breaker(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !b.isAnswered {
		b.isAnswered = true
		close(b.answered)
	}
}

// acquire takes one of the round's probe slots.
func (r *Round) acquire(ctx context.Context, tripped <-chan struct{}) (func(), error) {
	if r == nil {
		return func() {}, nil
	}
	select {
	case r.slots <- struct{}{}:
		return func() { <-r.slots }, nil
	case <-tripped:
		return nil, errTripped
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}
