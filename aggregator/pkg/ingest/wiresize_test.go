package ingest

import (
	"context"
	"testing"

	"google.golang.org/grpc/stats"
)

func TestReceivedSize(t *testing.T) {
	if got := receivedSize(context.Background()); got != -1 {
		t.Errorf("receivedSize of an untagged stream = %d, want -1 (not known)", got)
	}
	h := wireSizes{}
	ctx := h.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: "/pullwatch.v1.ReportService/Report"})
	if got := receivedSize(ctx); got != -1 {
		t.Errorf("receivedSize before any message = %d, want -1", got)
	}
	h.HandleRPC(ctx, &stats.InPayload{Length: 1234, WireLength: 99})
	h.HandleRPC(ctx, &stats.OutPayload{Length: 7})
	if got := receivedSize(ctx); got != 1234 {
		t.Errorf("receivedSize = %d, want 1234 (the decompressed length of the last message received)", got)
	}
}
