package stream

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"google.golang.org/grpc"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Dialer makes a connection to one aggregator address (host:port).
type Dialer func(address string) (*grpc.ClientConn, error)

// Replicas streams the node's reports to every aggregator replica: one
// Client (own connection, sequence numbers, snapshot and acknowledgement
// state, backoff with jitter) per address it is given, so that every
// replica holds the node's full state and either can be scraped or lost.
// The addresses come from the Service's EndpointSlices
// (discovery.Watch); a replica that stops being ready loses its stream, a
// new one gets the latest snapshot at once.
//
// A connection per address rather than one gRPC channel over all of them:
// a channel's balancer picks one backend per call, and pullwatch needs a
// call on each.
type Replicas struct {
	dial Dialer
	log  *slog.Logger
	// Configure sets up each new Client (backoff, timeouts); may be nil.
	Configure func(*Client)

	mu      sync.Mutex
	latest  *pb.NodeSnapshot
	want    []string           // the addresses to stream to
	members map[string]*member // the streams running, by address
	changed chan struct{}
}

type member struct {
	client *Client
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}
}

// NewReplicas returns Replicas that connect with dial.
func NewReplicas(dial Dialer, log *slog.Logger) *Replicas {
	return &Replicas{dial: dial, log: log, members: map[string]*member{}, changed: make(chan struct{}, 1)}
}

// SetAddresses sets the replicas to stream to; streams to addresses no
// longer listed end, new ones start. Run applies it.
func (r *Replicas) SetAddresses(addrs []string) {
	r.mu.Lock()
	r.want = slices.Clone(addrs)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Publish hands every stream the new snapshot; streams started later
// begin with the latest one.
func (r *Replicas) Publish(s *pb.NodeSnapshot) {
	r.mu.Lock()
	r.latest = s
	clients := make([]*Client, 0, len(r.members))
	for _, m := range r.members {
		clients = append(clients, m.client)
	}
	r.mu.Unlock()
	for _, c := range clients {
		c.Publish(s)
	}
}

// Connected reports whether the stream to at least one replica is up.
func (r *Replicas) Connected() bool {
	for _, up := range r.Endpoints() {
		if up {
			return true
		}
	}
	return false
}

// Endpoints returns each replica's address and whether its stream is up
// and acknowledged.
func (r *Replicas) Endpoints() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]bool, len(r.members))
	for addr, m := range r.members {
		out[addr] = m.client.Connected()
	}
	return out
}

// Run keeps a stream to every address of SetAddresses open until ctx
// ends, then closes them all.
func (r *Replicas) Run(ctx context.Context) {
	defer r.apply(ctx, nil)
	for {
		r.mu.Lock()
		want := r.want
		r.mu.Unlock()
		r.apply(ctx, want)
		select {
		case <-ctx.Done():
			return
		case <-r.changed:
		}
	}
}

// apply starts and stops streams so that exactly want run.
func (r *Replicas) apply(ctx context.Context, want []string) {
	r.mu.Lock()
	var stop []*member
	for addr, m := range r.members {
		if !slices.Contains(want, addr) {
			stop = append(stop, m)
			delete(r.members, addr)
			r.log.Info("aggregator replica gone; closing its stream", "aggregator", addr)
		}
	}
	latest := r.latest
	var start []string
	for _, addr := range want {
		if _, ok := r.members[addr]; !ok && ctx.Err() == nil {
			start = append(start, addr)
		}
	}
	r.mu.Unlock()

	for _, m := range stop {
		m.cancel()
		<-m.done
		_ = m.conn.Close()
	}
	for _, addr := range start {
		conn, err := r.dial(addr)
		if err != nil { // only for a malformed address or options
			r.log.Error("cannot connect to aggregator replica", "aggregator", addr, "err", err)
			continue
		}
		c := New(conn, r.log.With("aggregator", addr))
		if r.Configure != nil {
			r.Configure(c)
		}
		if latest != nil {
			c.Publish(latest)
		}
		mctx, cancel := context.WithCancel(ctx)
		m := &member{client: c, conn: conn, cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(m.done)
			c.Run(mctx)
		}()
		r.mu.Lock()
		r.members[addr] = m
		// A snapshot published between reading latest and here.
		if r.latest != latest {
			c.Publish(r.latest)
		}
		r.mu.Unlock()
		r.log.Info("streaming to aggregator replica", "aggregator", addr)
	}
	if len(start)+len(stop) > 0 {
		r.mu.Lock()
		addrs := slices.Sorted(maps.Keys(r.members))
		r.mu.Unlock()
		r.log.Info("aggregator replicas", "streaming_to", addrs)
	}
}
