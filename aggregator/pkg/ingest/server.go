// Package ingest is the aggregator's gRPC ReportService: it receives agent
// streams, validates each message, applies it to the state store and acks it.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// The kinds of report, as in pullwatch_reports_received_total{kind}.
const (
	KindSnapshot = "snapshot"
	KindUpdate   = "update"
)

// Kinds lists every report kind, so that counters can start at zero.
func Kinds() []string { return []string{KindSnapshot, KindUpdate} }

// Observer is told about every report; metrics.Reports implements it.
type Observer interface {
	// ReportReceived counts a valid message, including an update that was
	// answered with resync rather than applied.
	ReportReceived(kind string)
	// ReportRejected counts a refused message; reason is a Reason.
	ReportRejected(reason string)
	// ImageRefused counts one image report refused inside a message that
	// was otherwise kept; reason is a Reason.
	ImageRefused(reason string)
}

// Sharder spreads manifest checks over the nodes (shard.Planner): it sees
// every message before it is applied (and folds other nodes' results into
// delegated images), and says what each node's plan is.
type Sharder interface {
	Watch(node string) (<-chan struct{}, func())
	Ingest(node string, info *pullwatchv1.Node, snapshot bool, images []*pullwatchv1.ImageReport, removed []string, apply func())
	// DirectiveSince is the node's plan, or nil when it knows nothing of
	// the node or the plan's generation is still since.
	DirectiveSince(node, since string) *pullwatchv1.ProbeAssignments
}

// Server implements pullwatchv1.ReportServiceServer.
type Server struct {
	pullwatchv1.UnimplementedReportServiceServer

	store *state.Store
	// maxReportBytes bounds one agent message (0: no bound beyond gRPC's).
	maxReportBytes int
	obs            Observer
	log            *slog.Logger
	bounds         Bounds
	sharder        Sharder

	drainOnce sync.Once
	draining  chan struct{}

	refusals refusalLog

	// lender answers Credentials (credentials.go); nil: none lent.
	lender Lender

	// gate bounds the messages decoded and not yet applied (gate.go); nil
	// when the server was not made by NewGRPCServer.
	gate *gate
}

// NewServer returns a Server applying reports to store.
func NewServer(store *state.Store, obs Observer, log *slog.Logger) *Server {
	return &Server{store: store, obs: obs, log: log, draining: make(chan struct{}),
		refusals: refusalLog{limiter: rate.NewLimiter(refusalRate, refusalBurst)}}
}

// SetSharder turns probe sharding on: agents get their ProbeAssignments
// in Directives. Call before serving.
func (s *Server) SetSharder(sh Sharder) { s.sharder = sh }

// wireSlack is how far past maxReportBytes gRPC still receives a message,
// so that the server itself refuses it with the contract's InvalidArgument
// (a report too large is malformed like any other); past the slack, gRPC
// refuses it with ResourceExhausted before reading it. Memory per message
// is bounded by maxReportBytes + wireSlack either way.
const wireSlack = 1 << 20

// NewGRPCServer returns a gRPC server with srv registered, refusing
// messages over maxReportBytes.
func NewGRPCServer(srv *Server, maxReportBytes int, opts ...grpc.ServerOption) *grpc.Server {
	srv.maxReportBytes = maxReportBytes
	if srv.gate == nil {
		srv.gate = newGate(gateSlots())
	}
	base := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxReportBytes + wireSlack),
		grpc.ForceServerCodecV2(newGatedCodec(srv.gate)),
		grpc.StatsHandler(wireSizes{}),
		// Agents keep one stream open for as long as they run. Pinging
		// quiet connections notices a node that vanished without closing
		// TCP, so its stream (and pullwatch_agents_connected) is released
		// within about 40s instead of hanging until the kernel gives up.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Let agents send their own keepalive pings every 10s or more;
		// gRPC's default (5 minutes) would cut them off with "too_many_pings".
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if n := srv.bounds.MaxConcurrentStreams; n > 0 {
		// An agent needs one stream; many on one connection are a client
		// holding server goroutines, not an agent.
		base = append(base, grpc.MaxConcurrentStreams(n))
	}
	gs := grpc.NewServer(append(base, opts...)...)
	pullwatchv1.RegisterReportServiceServer(gs, srv)
	return gs
}

// Drain ends every open stream with codes.Unavailable so that agents
// reconnect (to another replica, or to this one after a restart). Streams
// never end on their own, so without Drain grpc.Server.GracefulStop would
// always wait for its full timeout.
func (s *Server) Drain() {
	s.drainOnce.Do(func() { close(s.draining) })
}

// stream is what the server remembers about one agent stream.
type stream struct {
	node    string // set by the first accepted snapshot
	lastSeq uint64
	log     *slog.Logger
	// replaced is closed when a newer stream for the same node takes
	// over; detach ends this stream's attachment to its node.
	replaced     chan struct{}
	replacedOnce sync.Once
	detach       func()
	// plan signals that the node's probe plan may have changed; sent is
	// the generation of the plan last sent on this stream (its hash: at
	// 5,000 nodes × 100 images, keeping every stream's last plan itself
	// held 80 MB).
	plan    <-chan struct{}
	unwatch func()
	sent    string
}

// Report serves one agent stream until the agent closes it, a message is
// refused, or the server drains.
func (s *Server) Report(rs pullwatchv1.ReportService_ReportServer) (err error) {
	ctx := rs.Context()
	s.store.StreamOpened()
	defer s.store.StreamClosed()

	st := &stream{log: s.log.With("peer", peerAddr(ctx)), replaced: make(chan struct{})}
	defer func() {
		if st.detach != nil {
			st.detach()
		}
		if st.unwatch != nil {
			st.unwatch()
		}
	}()
	// Until the stream says which node it reports, it holds a goroutine
	// and counts for nothing: it gets bounds.FirstReport to do so.
	var firstReport <-chan time.Time
	if s.bounds.FirstReport > 0 {
		t := time.NewTimer(s.bounds.FirstReport)
		defer t.Stop()
		firstReport = t.C
	}
	opened := time.Now()
	defer func() {
		// Durations as strings: slog's JSON handler would print nanoseconds.
		args := []any{"node", st.node, "duration", time.Since(opened).Round(time.Millisecond).String()}
		if err != nil {
			args = append(args, logging.ErrKey, err)
		}
		level := slog.LevelInfo
		if st.node == "" {
			// A stream that never said which node it reports: its
			// refusal, if any, was logged (within the budget); a flood of
			// such streams must not flood the log.
			level = slog.LevelDebug
		}
		st.log.Log(ctx, level, "agent stream closed", args...)
	}()

	done := make(chan struct{})
	defer close(done)
	msgs := s.receive(rs, done)
	for {
		select {
		case <-s.draining:
			return status.Error(codes.Unavailable, "aggregator shutting down; reconnect and send a snapshot")
		case <-st.replaced:
			s.streamClosed(ClosedReplaced)
			return status.Errorf(codes.Aborted, "a newer stream for node %s replaced this one", st.node)
		case <-firstReport:
			if st.node == "" {
				s.streamClosed(ClosedFirstReportTimeout)
				return status.Errorf(codes.DeadlineExceeded, "no snapshot within %s of opening the stream", s.bounds.FirstReport)
			}
		case r := <-msgs:
			if r.err != nil {
				return s.recvError(ctx, st, r.err)
			}
			ack, verr := s.accept(ctx, st, r.msg, r.size)
			if r.counted {
				s.gate.leave() // applied (or refused): the next message may be decoded
			}
			if verr != nil {
				s.obs.ReportRejected(string(verr.Reason))
				s.logRefusal(ctx, st.log, "node", st.node, "sequence", r.msg.GetSequence(), "reason", verr.Reason, logging.ErrKey, verr.Error())
				return status.Errorf(verr.Reason.code(), "report %d refused: %s", r.msg.GetSequence(), verr)
			}
			if err := rs.Send(&pullwatchv1.AggregatorMessage{Body: &pullwatchv1.AggregatorMessage_Ack{Ack: ack}}); err != nil {
				return fmt.Errorf("send ack %d: %w", ack.GetSequence(), err)
			}
		case <-st.plan:
			pa := s.sharder.DirectiveSince(st.node, st.sent)
			if pa == nil {
				continue
			}
			d := &pullwatchv1.Directive{ProbeAssignments: pa}
			if err := rs.Send(&pullwatchv1.AggregatorMessage{Body: &pullwatchv1.AggregatorMessage_Directive{Directive: d}}); err != nil {
				return fmt.Errorf("send probe assignments: %w", err)
			}
			st.sent = pa.GetGeneration()
		}
	}
}

type received struct {
	msg *pullwatchv1.AgentMessage
	// size is msg's encoded size as received (-1: not known).
	size int
	err  error
	// counted: msg holds a slot of the server's gate, which Report frees
	// once it applied msg.
	counted bool
}

// receive reads the stream in its own goroutine so that Report can also
// wait for Drain (and, later, send Directives) while no message arrives.
// Every result, the final error included, is delivered until Report closes
// done; the stream's context is no signal here, because gRPC may cancel it
// before Report has seen the Recv error that explains why. The goroutine
// ends after the first error, or once done is closed: Report has returned,
// so gRPC cancels the stream and Recv fails soon. A message that holds a
// slot of the gate gives it up when it is not delivered, or not taken
// within handoverWait.
func (s *Server) receive(rs pullwatchv1.ReportService_ReportServer, done <-chan struct{}) <-chan received {
	ch := make(chan received)
	go func() {
		var wait *time.Timer
		defer func() {
			if wait != nil {
				wait.Stop()
			}
		}()
		for {
			msg, err := rs.Recv()
			r := received{msg: msg, size: receivedSize(rs.Context()), err: err, counted: err == nil && s.gate != nil}
			if r.counted {
				if wait == nil {
					wait = time.NewTimer(handoverWait)
				} else {
					wait.Reset(handoverWait)
				}
				select {
				case ch <- r:
					continue
				case <-wait.C:
					s.gate.leave()
					r.counted = false
				case <-done:
					s.gate.leave()
					return
				}
			}
			select {
			case ch <- r:
			case <-done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// recvError turns a failed Recv into Report's result.
func (s *Server) recvError(ctx context.Context, st *stream, err error) error {
	switch {
	case errors.Is(err, io.EOF):
		return nil // the agent closed its side: a clean end
	case status.Code(err) == codes.ResourceExhausted:
		// Over the wire ceiling (grpc.MaxRecvMsgSize): gRPC refused it
		// before decoding, and told the agent ResourceExhausted itself.
		s.obs.ReportRejected(string(ReasonTooLarge))
		s.logRefusal(ctx, st.log, "node", st.node, "reason", ReasonTooLarge, logging.ErrKey, err)
	}
	return fmt.Errorf("receive: %w", err)
}

// accept checks one message, of size bytes as received (-1: not known),
// against the stream, applies it and returns its Ack.
func (s *Server) accept(ctx context.Context, st *stream, msg *pullwatchv1.AgentMessage, size int) (*pullwatchv1.Ack, *Error) {
	if size < 0 {
		size = proto.Size(msg)
	}
	if s.maxReportBytes > 0 && size > s.maxReportBytes {
		return nil, fail(ReasonTooLarge, "message", "%d bytes, larger than max %d (the aggregator's --max-report-bytes)", size, s.maxReportBytes)
	}
	refused, err := Screen(msg)
	if err != nil {
		return nil, err
	}
	compactMessage(msg)
	if seq := msg.GetSequence(); seq <= st.lastSeq {
		return nil, fail(ReasonBadSequence, "sequence", "%d after %d; sequence numbers start at 1 and increase strictly on each stream", seq, st.lastSeq)
	}
	st.lastSeq = msg.GetSequence()
	ack := &pullwatchv1.Ack{Sequence: msg.GetSequence()}
	for _, r := range refused {
		// One bad image report (a hostile registry's answer the agent did
		// not clip, an older agent) must not blind pullwatch to the node:
		// that image is refused, the rest of the report kept.
		s.obs.ImageRefused(string(r.Reason))
		st.log.WarnContext(ctx, "image report refused", "node", st.node, "sequence", msg.GetSequence(), "reason", r.Reason, logging.ErrKey, r.Error())
	}

	switch body := msg.GetBody().(type) {
	case *pullwatchv1.AgentMessage_Snapshot:
		name := body.Snapshot.GetNode().GetName()
		if err := st.sameNode("snapshot.node.name", name); err != nil {
			return nil, err
		}
		if err := s.admitNode(name); err != nil {
			return nil, err
		}
		if err := s.admitVersion(body.Snapshot.GetNode().GetAgentVersion()); err != nil {
			return nil, err
		}
		if err := s.bounds.PerNode.CheckEncoded(name, body.Snapshot.GetImages(), size); err != nil {
			return nil, limitError("snapshot.images", err)
		}
		if s.sharder != nil {
			if st.node == "" {
				st.plan, st.unwatch = s.sharder.Watch(name)
			}
			s.sharder.Ingest(name, body.Snapshot.GetNode(), true, body.Snapshot.GetImages(), nil, func() { s.store.ApplySnapshot(body.Snapshot) })
		} else {
			s.store.ApplySnapshot(body.Snapshot)
		}
		s.obs.ReportReceived(KindSnapshot)
		if st.node == "" {
			st.node = name
			// One live stream per node: this one replaces any other.
			st.detach = s.store.Attach(name, func() { st.replacedOnce.Do(func() { close(st.replaced) }) })
			st.log.InfoContext(ctx, "agent stream opened", "node", name, "images", len(body.Snapshot.GetImages()))
		}
	case *pullwatchv1.AgentMessage_Update:
		name := body.Update.GetNodeName()
		if st.node == "" {
			ack.Resync = true
			st.log.InfoContext(ctx, "update before any snapshot; asked the agent to resync", "node", name)
		} else if err := st.sameNode("update.node_name", name); err != nil {
			return nil, err
		} else if known, err := s.applyUpdate(name, body.Update); err != nil {
			return nil, limitError("update", err)
		} else if !known {
			// The store forgot the node (deleted, or silent for
			// --forget-after).
			ack.Resync = true
			st.log.InfoContext(ctx, "update for a node without state; asked the agent to resync", "node", name)
		}
		s.obs.ReportReceived(KindUpdate)
	}
	return ack, nil
}

// applyUpdate applies an update within the per-node bounds, through the
// sharder when there is one. It reports whether the store knew the node.
func (s *Server) applyUpdate(name string, u *pullwatchv1.NodeUpdate) (known bool, err error) {
	if s.sharder == nil {
		return s.store.ApplyUpdateWithin(u, s.bounds.PerNode)
	}
	s.sharder.Ingest(name, nil, false, u.GetUpserts(), u.GetRemovedImages(), func() { known, err = s.store.ApplyUpdateWithin(u, s.bounds.PerNode) })
	return known, err
}

// sameNode refuses a message about another node than the stream's first
// snapshot: one stream reports one node.
func (st *stream) sameNode(field, name string) *Error {
	if st.node != "" && name != st.node {
		return fail(ReasonNodeMismatch, field, "%s, but this stream reports node %s; use one stream per node", quote(name), quote(st.node))
	}
	return nil
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
