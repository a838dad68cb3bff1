package probe

import (
	"net/http"
	"strconv"
	"time"
)

// Rate-limit backoff: after a 429 the prober leaves the endpoint host
// alone until Retry-After has passed (defaultBackoff when the registry
// sends none, capped at maxBackoff), reporting rate_limited meanwhile
// without asking, so pullwatch never adds to a registry's overload.
const (
	defaultBackoff = time.Minute
	maxBackoff     = 15 * time.Minute
)

// backOff holds host off and returns for how long.
func (p *Prober) backOff(host, retryAfter string) time.Duration {
	now := p.opts.Now()
	d := defaultBackoff
	if secs, err := strconv.Atoi(retryAfter); err == nil && secs >= 0 {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(retryAfter); err == nil {
		d = t.Sub(now)
	}
	d = min(max(d, 0), maxBackoff)
	p.limitMu.Lock()
	p.backoff[host] = now.Add(d)
	p.limitMu.Unlock()
	return d
}

func (p *Prober) backingOff(host string) (time.Time, bool) {
	p.limitMu.Lock()
	defer p.limitMu.Unlock()
	until, ok := p.backoff[host]
	if !ok {
		return time.Time{}, false
	}
	if !p.opts.Now().Before(until) {
		delete(p.backoff, host)
		return time.Time{}, false
	}
	return until, true
}
