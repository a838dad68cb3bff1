// Package stream keeps the agent's report stream to the aggregator open:
// a full snapshot after every (re)connect, then only what changed, each
// message acknowledged. Reconnects back off exponentially with jitter.
package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pullwatch/pullwatch/pkg/logging"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// snapshotEvery is how often a full snapshot replaces an update.
const snapshotEvery = 10

// Client sends the latest node snapshot to the aggregator.
type Client struct {
	conn *grpc.ClientConn
	log  *slog.Logger

	mu        sync.Mutex
	latest    *pb.NodeSnapshot
	wake      chan struct{}
	connected atomic.Bool

	// MinBackoff and MaxBackoff bound reconnect waits (defaults 1s, 30s).
	MinBackoff, MaxBackoff time.Duration
	// AckTimeout is how long to wait for the aggregator to acknowledge a
	// message before the stream is considered broken (default 30s).
	AckTimeout time.Duration
	// OnDirective, when set, is handed every Directive the aggregator
	// sends (probe sharding's assignments: round.Plan.Apply), from the
	// stream's receiving goroutine.
	OnDirective func(*pb.Directive)
}

// New uses conn (a grpc.ClientConn to the aggregator) for streams.
func New(conn *grpc.ClientConn, log *slog.Logger) *Client {
	return &Client{conn: conn, log: log, wake: make(chan struct{}, 1),
		MinBackoff: time.Second, MaxBackoff: 30 * time.Second, AckTimeout: 30 * time.Second}
}

// Publish hands the client a new snapshot; only the latest one is kept
// while disconnected.
func (c *Client) Publish(s *pb.NodeSnapshot) {
	c.mu.Lock()
	c.latest = s
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Client) current() *pb.NodeSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.latest
}

// Connected reports whether a stream is open and its last message was
// acknowledged.
func (c *Client) Connected() bool { return c.connected.Load() }

// Run keeps a stream open until ctx ends.
func (c *Client) Run(ctx context.Context) {
	backoff := c.MinBackoff
	for ctx.Err() == nil {
		if c.current() == nil {
			select {
			case <-ctx.Done():
				return
			case <-c.wake:
				continue
			}
		}
		start := time.Now()
		err := c.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > c.MaxBackoff {
			backoff = c.MinBackoff // the stream was healthy for a while
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("stream to aggregator ended; reconnecting", logging.ErrKey, err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, c.MaxBackoff)
	}
}

// session runs one stream: snapshot, then updates on every Publish.
func (c *Client) session(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer c.connected.Store(false)
	st, err := pb.NewReportServiceClient(c.conn).Report(ctx)
	if err != nil {
		return fmt.Errorf("open report stream: %w", err)
	}
	acks := make(chan *pb.Ack, 1)
	resync := make(chan struct{}, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch b := m.Body.(type) {
			case *pb.AggregatorMessage_Ack:
				if b.Ack.Resync {
					select {
					case resync <- struct{}{}:
					default:
					}
				}
				select {
				case acks <- b.Ack:
				default:
				}
			case *pb.AggregatorMessage_Directive:
				if c.OnDirective != nil {
					c.OnDirective(b.Directive)
				}
				if b.Directive.GetSendSnapshot() {
					select {
					case resync <- struct{}{}:
					default:
					}
				}
			}
		}
	}()

	var seq uint64
	var sent *pb.NodeSnapshot // what the aggregator has, as far as we know
	for {
		cur := c.current()
		msg := &pb.AgentMessage{}
		select {
		case <-resync:
			sent = nil
		default:
		}
		// A full snapshot after (re)connect, when the node itself changed,
		// and every snapshotEvery messages so latencies and check times
		// that updates leave out are refreshed.
		if sent == nil || !proto.Equal(sent.GetNode(), cur.GetNode()) || seq%snapshotEvery == snapshotEvery-1 {
			sent = nil
			msg.Body = &pb.AgentMessage_Snapshot{Snapshot: cur}
		} else {
			msg.Body = &pb.AgentMessage_Update{Update: Diff(sent, cur)}
		}
		seq++
		msg.Sequence = seq
		if err := st.Send(msg); err != nil {
			return fmt.Errorf("send report %d: %w", seq, recvOr(recvErr, err))
		}
		kind := "update"
		if sent == nil {
			kind = "snapshot"
			c.log.Info("sent snapshot to aggregator", "images", len(cur.GetImages()), "sequence", seq)
		}
		if err := c.awaitAck(ctx, seq, acks, recvErr); err != nil {
			return fmt.Errorf("%s %d: %w", kind, seq, err)
		}
		c.connected.Store(true)
		sent = cur
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			return err
		case <-resync:
			sent = nil
		case <-c.wake:
		}
	}
}

func (c *Client) awaitAck(ctx context.Context, seq uint64, acks <-chan *pb.Ack, recvErr chan error) error {
	timer := time.NewTimer(c.AckTimeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			recvErr <- err // later selects see it too
			return err
		case <-timer.C:
			return errors.New("no acknowledgement from the aggregator within " + c.AckTimeout.String())
		case a := <-acks:
			if a.GetSequence() == seq {
				return nil
			}
		}
	}
}

// recvOr prefers the stream's own status (e.g. InvalidArgument with the
// aggregator's reason) over Send's io.EOF.
func recvOr(recvErr chan error, sendErr error) error {
	select {
	case err := <-recvErr:
		return err
	case <-time.After(time.Second):
		return sendErr
	}
}

// Diff returns the update that turns prev into cur: images added or
// changed, whole, and images gone. Images whose result is the same but for
// check times and latencies are left out, so a quiet node sends an empty
// update that still refreshes its freshness.
func Diff(prev, cur *pb.NodeSnapshot) *pb.NodeUpdate {
	u := &pb.NodeUpdate{NodeName: cur.GetNode().GetName(), ObservedAt: cur.GetObservedAt()}
	if u.ObservedAt == nil {
		u.ObservedAt = timestamppb.Now()
	}
	old := make(map[string]*pb.ImageReport, len(prev.GetImages()))
	for _, im := range prev.GetImages() {
		old[im.GetImage()] = im
	}
	for _, im := range cur.GetImages() {
		if p, ok := old[im.GetImage()]; !ok || !sameResult(p, im) {
			u.Upserts = append(u.Upserts, im)
		}
		delete(old, im.GetImage())
	}
	for name := range old {
		u.RemovedImages = append(u.RemovedImages, name)
	}
	return u
}

// sameResult compares two reports of an image, ignoring when they were
// checked and how long the endpoints took.
func sameResult(a, b *pb.ImageReport) bool {
	strip := func(r *pb.ImageReport) *pb.ImageReport {
		r = proto.Clone(r).(*pb.ImageReport)
		r.CheckedAt = nil
		for _, e := range r.Endpoints {
			e.CheckedAt, e.Latency = nil, nil
		}
		return r
	}
	return proto.Equal(strip(a), strip(b))
}
