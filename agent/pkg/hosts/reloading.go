package hosts

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
)

// tomlLine says where a TOML parse error is, as the parser gives it.
func tomlLine(err error) string {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return fmt.Sprintf("line %d, column %d", row, col)
	}
	return "position unknown"
}

// Reloading is the runtime's registry configuration when it may fail to
// load (a registries.conf or config.toml that does not parse): while it
// does not, every image's endpoints fail with the load error, which names
// the file, so those images are unknown with that reason and the agent
// keeps running and reporting; it tries again at most every Retry.
type Reloading struct {
	Load  func(ctx context.Context) (Resolver, error)
	Retry time.Duration
	Now   func() time.Time

	mu    sync.Mutex
	r     Resolver
	err   error
	tried time.Time
}

// Loaded returns the configuration once loaded, or the error of the last
// attempt (trying again when Retry has passed).
func (l *Reloading) Loaded(ctx context.Context) (Resolver, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now
	if l.Now != nil {
		now = l.Now
	}
	if l.r == nil && (l.tried.IsZero() || now().Sub(l.tried) >= l.Retry) {
		l.tried = now()
		l.r, l.err = l.Load(ctx)
	}
	return l.r, l.err
}

// Endpoints implements Resolver.
func (l *Reloading) Endpoints(ctx context.Context, ref imageref.Ref) ([]Endpoint, error) {
	r, err := l.Loaded(ctx)
	if err != nil {
		return nil, err
	}
	return r.Endpoints(ctx, ref)
}
