package logging

import (
	"context"
	"log/slog"
	"sync"
)

// onceKeys bounds Once's memory: past it, every key may log once more.
const onceKeys = 1024

// Once writes a line once per key (a refusal per caller and reason, say),
// so that a client retrying the same thing does not flood the log. The
// zero value is ready to use.
type Once struct {
	mu   sync.Mutex
	seen map[string]bool
}

// Log writes msg to log at level unless a line with key was written
// before. It holds at most onceKeys keys, then starts over.
func (o *Once) Log(ctx context.Context, log *slog.Logger, key string, level slog.Level, msg string, args ...any) {
	o.mu.Lock()
	seen := o.seen[key]
	if !seen {
		if o.seen == nil || len(o.seen) >= onceKeys {
			o.seen = map[string]bool{}
		}
		o.seen[key] = true
	}
	o.mu.Unlock()
	if !seen {
		log.Log(ctx, level, msg, args...)
	}
}
