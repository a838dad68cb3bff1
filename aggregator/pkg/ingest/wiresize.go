package ingest

import (
	"context"

	"google.golang.org/grpc/stats"
)

// wireSizes is a gRPC stats handler that tells each stream the size of the
// message it last received, as gRPC read it (decompressed): the bound on a
// message's size (--max-report-bytes) is checked against it. Measuring the
// decoded message again with proto.Size walked every field of every report
// once more, a twentieth of the CPU of a round of snapshots at 15,000 nodes
// (docs/benchmarks.md, issue 21).
//
// gRPC calls HandleRPC with the received message's size in the goroutine
// that called RecvMsg, before RecvMsg returns, so the stream's receive loop
// reads it afterwards without a lock.
type wireSizes struct{}

type wireSizeKey struct{}

// lastSize is a stream's holder of its last message's size.
type lastSize struct{ n int }

func (wireSizes) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, wireSizeKey{}, &lastSize{n: -1})
}

func (wireSizes) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if in, ok := s.(*stats.InPayload); ok {
		if l, ok := ctx.Value(wireSizeKey{}).(*lastSize); ok {
			l.n = in.Length
		}
	}
}

func (wireSizes) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (wireSizes) HandleConn(context.Context, stats.ConnStats)                       {}

// receivedSize is the size of the message the stream of ctx received last,
// or -1 when it is not known (a server not made by NewGRPCServer).
func receivedSize(ctx context.Context) int {
	if l, ok := ctx.Value(wireSizeKey{}).(*lastSize); ok {
		return l.n
	}
	return -1
}
