package authn

import (
	"context"
	"errors"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Authenticator verifies a bearer token: *Verifier.
type Authenticator interface {
	Verify(ctx context.Context, token string) (Identity, error)
}

// ServerOptions are the gRPC server options that authenticate every call
// (streams and unary calls) with auth, put the caller's Identity in the
// call's context, and refuse, on a stream, any AgentMessage about another
// node than the caller's.
//
// An open stream's token is verified again every reverify interval (the
// review cache's TTL when auth is a *Verifier, else DefaultMaxCacheTTL):
// once the API no longer accepts it (its pod was deleted) the stream ends
// at its next message, not when the token expires.
func ServerOptions(auth Authenticator, refusals *Refusals) []grpc.ServerOption {
	reverify := DefaultMaxCacheTTL
	if v, ok := auth.(*Verifier); ok {
		reverify = v.cfg.MaxCacheTTL
	}
	return (&guard{auth: auth, refusals: refusals, now: time.Now, reverify: reverify}).serverOptions()
}

func (g *guard) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainStreamInterceptor(g.stream),
		grpc.ChainUnaryInterceptor(g.unary),
	}
}

type guard struct {
	auth     Authenticator
	refusals *Refusals
	now      func() time.Time
	// reverify is how often an open stream's token is verified again
	// (0: never).
	reverify time.Duration
}

func (g *guard) authenticate(ctx context.Context) (context.Context, Identity, error) {
	return g.authenticateToken(ctx, bearerToken(ctx))
}

func (g *guard) authenticateToken(ctx context.Context, token string) (context.Context, Identity, error) {
	id, err := g.auth.Verify(ctx, token)
	if err != nil {
		var r *Refusal
		if errors.As(err, &r) {
			g.refusals.Refuse(ctx, Source(ctx), r)
			return nil, Identity{}, r
		}
		return nil, Identity{}, status.Error(codes.Internal, "authentication failed")
	}
	return WithIdentity(ctx, id), id, nil
}

func (g *guard) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, _, err := g.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (g *guard) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	token := bearerToken(ss.Context())
	ctx, id, err := g.authenticateToken(ss.Context(), token)
	if err != nil {
		return err
	}
	bs := &boundStream{ServerStream: ss, ctx: ctx, id: id, g: g, token: token, verified: g.now()}
	// The token was verified, so its expiry is the API server's.
	bs.expires, bs.expiring = peekClaims(token).expiry()
	return handler(srv, bs)
}

// boundStream is a stream whose caller is id: it refuses a snapshot or
// update about any other node, and ends at the first message after the
// token expired, so that no stream outlives its credential (the agent
// reconnects with the token the kubelet has rotated into its file).
type boundStream struct {
	grpc.ServerStream
	ctx      context.Context
	id       Identity
	g        *guard
	expires  time.Time
	expiring bool
	// token was last verified at verified.
	token    string
	verified time.Time
}

func (s *boundStream) Context() context.Context { return s.ctx }

func (s *boundStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if s.expiring && !s.g.now().Before(s.expires) {
		// Routine (hourly with the shipped token lifetime): not counted as
		// a refusal.
		return status.Error(codes.Unauthenticated, "token expired during the stream: reconnect with the current token")
	}
	if err := s.stillValid(); err != nil {
		return err
	}
	msg, ok := m.(*pullwatchv1.AgentMessage)
	if !ok {
		return nil
	}
	if r := CheckNode(s.id, ReportedNode(msg)); r != nil {
		s.g.refusals.Refuse(s.ctx, Source(s.ctx), r)
		return r
	}
	return nil
}

// stillValid verifies the stream's token again once the reverify interval
// has passed since it last was: a token the API no longer accepts (its
// pod, hence its node's agent, is gone) or that now names another node
// ends the stream, counted as a refusal. When the API cannot be asked the
// stream is kept and asked again at the next message.
func (s *boundStream) stillValid() error {
	if s.g.reverify <= 0 || s.g.now().Sub(s.verified) < s.g.reverify {
		return nil
	}
	id, err := s.g.auth.Verify(s.ctx, s.token)
	var r *Refusal
	switch {
	case err == nil && id.Node == s.id.Node && id.ServiceAccount == s.id.ServiceAccount:
		s.verified = s.g.now()
		return nil
	case err == nil:
		r = refuse(ReasonNodeMismatch, "this stream's token is bound to node %q now, not %q: reconnect", id.Node, s.id.Node)
	case !errors.As(err, &r):
		return nil
	case r.Code == codes.Unavailable:
		return nil // not known now: keep the stream, ask at the next message
	}
	s.g.refusals.Refuse(s.ctx, Source(s.ctx), r)
	return r
}

// ReportedNode is the node an agent message claims to report (the
// snapshot's node name or the update's), "" for other messages.
func ReportedNode(msg *pullwatchv1.AgentMessage) string {
	switch b := msg.GetBody().(type) {
	case *pullwatchv1.AgentMessage_Snapshot:
		return b.Snapshot.GetNode().GetName()
	case *pullwatchv1.AgentMessage_Update:
		return b.Update.GetNodeName()
	}
	return ""
}

// CheckNode refuses (PermissionDenied, node_mismatch) a report about node
// from a verified caller bound to another node. Without verification
// (auth off) any node goes.
func CheckNode(id Identity, node string) *Refusal {
	if !id.Verified || node == id.Node {
		return nil
	}
	return refuse(ReasonNodeMismatch, "report for node %q refused: this agent's token is bound to node %q", node, id.Node)
}

// bearerToken is the token of the call's "authorization: Bearer" metadata,
// "" when there is none.
func bearerToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return ""
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// Source is the caller's address without its port: what refusals are
// logged once per.
func Source(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return host
	}
	return p.Addr.String()
}
