package ingest

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/pullwatch/pullwatch/pkg/buildinfo"
	"google.golang.org/grpc/codes"

	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

// The reasons a report is refused for the aggregator's bounds rather than
// for its shape; they are reasons of pullwatch_reports_rejected_total too.
const (
	ReasonUnknownNode       Reason = "unknown_node"        // the Kubernetes API has no Node of that name
	ReasonNodesLoading      Reason = "nodes_loading"       // the Kubernetes API's node list is not loaded yet
	ReasonNodeImageLimit    Reason = "node_image_limit"    // the node would have more images than --max-node-images
	ReasonNodeEndpointLimit Reason = "node_endpoint_limit" // the node would have more endpoints than --max-node-endpoints
	ReasonVersionSkew       Reason = "version_skew"        // the agent's version is outside the skew rule (buildinfo.Skew)
	ReasonNodeByteLimit     Reason = "node_byte_limit"     // the node's reports would take more than --max-node-bytes
)

// BoundReasons lists the bound Reasons, as Reasons lists the others.
func BoundReasons() []string {
	return []string{string(ReasonUnknownNode), string(ReasonNodesLoading), string(ReasonNodeImageLimit), string(ReasonNodeEndpointLimit),
		string(ReasonVersionSkew), string(ReasonNodeByteLimit)}
}

// Why a stream ended other than by a refused message or the agent closing
// it: the "reason" of pullwatch_agent_streams_closed_total.
const (
	// ClosedReplaced: a newer stream for the same node replaced it.
	ClosedReplaced = "replaced"
	// ClosedFirstReportTimeout: no snapshot within Bounds.FirstReport.
	ClosedFirstReportTimeout = "first_report_timeout"
)

// ClosedReasons lists the Closed* reasons.
func ClosedReasons() []string { return []string{ClosedReplaced, ClosedFirstReportTimeout} }

// StreamObserver is told why streams end; metrics.Reports implements it.
// An Observer that does not implement it is not told.
type StreamObserver interface {
	StreamClosed(reason string)
}

// Nodes is what the Kubernetes API says about nodes: kubewatch.Watcher.
type Nodes interface {
	// Node reports whether the API has a Node of that name; synced is
	// false until the node list has been loaded.
	Node(name string) (zone string, exists, synced bool)
}

// Bounds limit what agents can make the aggregator hold. The zero value
// bounds nothing beyond the message limits of validate.
type Bounds struct {
	// Nodes, when set, admits reports only for Nodes the API has. Until
	// its node list is loaded, snapshots are refused with Unavailable
	// (the agent retries with backoff).
	Nodes Nodes
	// PerNode caps images, endpoints and bytes per node.
	PerNode state.Limits
	// FirstReport is how long a new stream may take to send its first
	// snapshot before it is closed (0: forever).
	FirstReport time.Duration
	// MaxConcurrentStreams bounds streams per HTTP/2 connection
	// (grpc.MaxConcurrentStreams; 0: gRPC's default).
	MaxConcurrentStreams uint32
	// Version is the aggregator's own version: snapshots of agents outside
	// the version-skew rule (buildinfo.Skew) are refused with
	// FailedPrecondition. Empty, or a version that names no release: every
	// agent is accepted.
	Version string
}

// SetBounds applies b to the server's streams; call it before
// NewGRPCServer and before serving.
func (s *Server) SetBounds(b Bounds) { s.bounds = b }

func (s *Server) streamClosed(reason string) {
	if o, ok := s.obs.(StreamObserver); ok {
		o.StreamClosed(reason)
	}
}

// admitNode refuses a snapshot for a node the Kubernetes API does not
// have (nil: admitted, or no API).
func (s *Server) admitNode(name string) *Error {
	if s.bounds.Nodes == nil {
		return nil
	}
	_, exists, synced := s.bounds.Nodes.Node(name)
	switch {
	case !synced:
		return fail(ReasonNodesLoading, "snapshot.node.name", "the aggregator has not loaded the cluster's Nodes yet; retry")
	case !exists:
		return fail(ReasonUnknownNode, "snapshot.node.name", "%s is not a Node of this cluster", quote(name))
	}
	return nil
}

// admitVersion refuses a snapshot of an agent whose version the skew rule
// excludes (nil: admitted).
func (s *Server) admitVersion(agentVersion string) *Error {
	if err := buildinfo.Skew(s.bounds.Version, agentVersion); err != nil {
		return fail(ReasonVersionSkew, "snapshot.node.agent_version", "%v", err)
	}
	return nil
}

// limitError turns the store's limit error into a refusal.
func limitError(field string, err error) *Error {
	reason := ReasonNodeImageLimit
	if le := (*state.LimitError)(nil); errors.As(err, &le) {
		switch le.What {
		case state.LimitEndpoints:
			reason = ReasonNodeEndpointLimit
		case state.LimitBytes:
			reason = ReasonNodeByteLimit
		}
	}
	return fail(reason, field, "%v", err)
}

// code is the gRPC status a refusal for reason ends the stream with:
// InvalidArgument for a malformed message, others for the bounds.
func (r Reason) code() codes.Code {
	switch r {
	case ReasonUnknownNode, ReasonVersionSkew:
		return codes.FailedPrecondition
	case ReasonNodesLoading:
		return codes.Unavailable
	case ReasonNodeImageLimit, ReasonNodeEndpointLimit, ReasonNodeByteLimit:
		return codes.ResourceExhausted
	}
	return codes.InvalidArgument
}

// The "report refused" log budget: a burst of refusalBurst lines, then
// refusalRate per second; every refusal is counted in
// pullwatch_reports_rejected_total whether logged or not.
const (
	refusalBurst = 20
	refusalRate  = 1
)

// refusalLog rate-limits "report refused" lines, so that a flood of bad
// streams costs a few lines and a count, not a line each.
type refusalLog struct {
	limiter    *rate.Limiter
	mu         sync.Mutex
	suppressed int
}

// logRefusal writes one "report refused" line within the budget, with the
// number of lines suppressed since the last one written.
func (s *Server) logRefusal(ctx context.Context, log *slog.Logger, args ...any) {
	r := &s.refusals
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.limiter.Allow() {
		r.suppressed++
		return
	}
	if r.suppressed > 0 {
		args = append(args, "suppressed_since_last", r.suppressed)
		r.suppressed = 0
	}
	log.WarnContext(ctx, "report refused", args...)
}
