package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

// countingObserver records what the server reports to its Observer.
type countingObserver struct {
	mu       sync.Mutex
	received map[string]int
	rejected map[string]int
	refused  map[string]int
}

func newCountingObserver() *countingObserver {
	return &countingObserver{received: map[string]int{}, rejected: map[string]int{}, refused: map[string]int{}}
}

func (o *countingObserver) ImageRefused(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refused[reason]++
}

func (o *countingObserver) refusedCount(reason Reason) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refused[string(reason)]
}

func (o *countingObserver) ReportReceived(kind string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.received[kind]++
}

func (o *countingObserver) ReportRejected(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rejected[reason]++
}

func (o *countingObserver) rejectedCount(reason Reason) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.rejected[string(reason)]
}

// testMaxReportBytes is small enough to exceed with a valid message.
const testMaxReportBytes = 1 << 20

type harness struct {
	store  *state.Store
	obs    *countingObserver
	srv    *Server
	client pullwatchv1.ReportServiceClient
}

// newHarness serves a Server on a real loopback listener and dials it.
func newHarness(t *testing.T, setup ...func(*Server)) *harness {
	t.Helper()
	return newBoundedHarness(t, Bounds{}, setup...)
}

// newBoundedHarness is newHarness with bounds.
func newBoundedHarness(t *testing.T, bounds Bounds, setup ...func(*Server)) *harness {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{store: state.New(time.Minute), obs: newCountingObserver()}
	h.srv = NewServer(h.store, h.obs, slog.New(slog.NewTextHandler(t.Output(), nil)))
	h.srv.SetBounds(bounds)
	for _, f := range setup {
		f(h.srv)
	}
	gs := NewGRPCServer(h.srv, testMaxReportBytes)
	go gs.Serve(lis)
	// Drain and GracefulStop wait for every handler to return, so none
	// logs to t.Output() after the test has ended.
	t.Cleanup(func() {
		h.srv.Drain()
		gs.GracefulStop()
	})

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h.client = pullwatchv1.NewReportServiceClient(conn)
	return h
}

func (h *harness) open(t *testing.T) pullwatchv1.ReportService_ReportClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	rs, err := h.client.Report(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// exchange sends msg and returns the server's Ack, or the stream's error.
func exchange(rs pullwatchv1.ReportService_ReportClient, msg *pullwatchv1.AgentMessage) (*pullwatchv1.Ack, error) {
	// Send returns io.EOF when the server has already ended the stream;
	// the reason is then what Recv returns.
	if err := rs.Send(msg); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	resp, err := rs.Recv()
	if err != nil {
		return nil, err
	}
	return resp.GetAck(), nil
}

func mustAck(t *testing.T, rs pullwatchv1.ReportService_ReportClient, msg *pullwatchv1.AgentMessage) *pullwatchv1.Ack {
	t.Helper()
	ack, err := exchange(rs, msg)
	if err != nil {
		t.Fatalf("message %d: %v", msg.GetSequence(), err)
	}
	if ack.GetSequence() != msg.GetSequence() {
		t.Fatalf("ack sequence %d, want %d", ack.GetSequence(), msg.GetSequence())
	}
	return ack
}

// Builders of valid messages; tests break them on purpose.

func img(ref string) *pullwatchv1.ImageReport {
	return &pullwatchv1.ImageReport{
		Image:    ref,
		Status:   pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE,
		Registry: "docker.io",
		Endpoints: []*pullwatchv1.EndpointResult{{
			Url:     "https://registry-1.docker.io/v2",
			Role:    pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM,
			Status:  pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE,
			Latency: durationpb.New(120 * time.Millisecond),
		}},
	}
}

func snapshot(seq uint64, node string, images ...*pullwatchv1.ImageReport) *pullwatchv1.AgentMessage {
	return &pullwatchv1.AgentMessage{Sequence: seq, Body: &pullwatchv1.AgentMessage_Snapshot{Snapshot: &pullwatchv1.NodeSnapshot{
		Node:   &pullwatchv1.Node{Name: node},
		Images: images,
	}}}
}

func update(seq uint64, node string, upserts []*pullwatchv1.ImageReport, removed ...string) *pullwatchv1.AgentMessage {
	return &pullwatchv1.AgentMessage{Sequence: seq, Body: &pullwatchv1.AgentMessage_Update{Update: &pullwatchv1.NodeUpdate{
		NodeName:      node,
		Upserts:       upserts,
		RemovedImages: removed,
	}}}
}

// imgWith returns a valid image report changed by edit.
func imgWith(ref string, edit func(*pullwatchv1.ImageReport)) *pullwatchv1.ImageReport {
	im := img(ref)
	edit(im)
	return im
}

func images(n int, edit func(*pullwatchv1.ImageReport)) []*pullwatchv1.ImageReport {
	out := make([]*pullwatchv1.ImageReport, n)
	for i := range out {
		out[i] = imgWith("registry.example/app-"+strconv.Itoa(i)+":1", edit)
	}
	return out
}

func nodeImages(t *testing.T, s *state.Store, node string) []string {
	t.Helper()
	for _, n := range s.Nodes() {
		if n.Name == node {
			var refs []string
			for _, im := range n.Images {
				refs = append(refs, im.GetImage()+"="+im.GetStatus().Word())
			}
			return refs
		}
	}
	return nil
}

func TestReportAccepts(t *testing.T) {
	absent := func(im *pullwatchv1.ImageReport) { im.Status = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT }
	tests := []struct {
		name       string
		msgs       []*pullwatchv1.AgentMessage
		wantResync []bool // per message
		wantImages []string
	}{
		{
			name:       "snapshot",
			msgs:       []*pullwatchv1.AgentMessage{snapshot(1, "node-a", img("a:1"), img("b:1"))},
			wantResync: []bool{false},
			wantImages: []string{"a:1=available", "b:1=available"},
		},
		{
			name: "update after snapshot is applied",
			msgs: []*pullwatchv1.AgentMessage{
				snapshot(1, "node-a", img("a:1"), img("b:1")),
				update(2, "node-a", []*pullwatchv1.ImageReport{imgWith("a:1", absent), img("c:1")}, "b:1"),
			},
			wantResync: []bool{false, false},
			wantImages: []string{"a:1=absent", "c:1=available"},
		},
		{
			name: "update before snapshot asks for resync",
			msgs: []*pullwatchv1.AgentMessage{
				update(1, "node-a", []*pullwatchv1.ImageReport{img("a:1")}),
				snapshot(2, "node-a", img("b:1")),
				update(5, "node-a", []*pullwatchv1.ImageReport{img("c:1")}), // gaps in sequence are fine
			},
			wantResync: []bool{true, false, false},
			wantImages: []string{"b:1=available", "c:1=available"},
		},
		{
			name: "second snapshot replaces the node",
			msgs: []*pullwatchv1.AgentMessage{
				snapshot(1, "node-a", img("a:1")),
				snapshot(2, "node-a", img("b:1")),
			},
			wantResync: []bool{false, false},
			wantImages: []string{"b:1=available"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			rs := h.open(t)
			for i, msg := range tt.msgs {
				if ack := mustAck(t, rs, msg); ack.GetResync() != tt.wantResync[i] {
					t.Errorf("message %d: resync %v, want %v", msg.GetSequence(), ack.GetResync(), tt.wantResync[i])
				}
			}
			got := nodeImages(t, h.store, "node-a")
			if strings.Join(got, " ") != strings.Join(tt.wantImages, " ") {
				t.Errorf("node-a images = %v, want %v", got, tt.wantImages)
			}
		})
	}
}

func TestReportRefuses(t *testing.T) {
	var (
		bad = func(edit func(*pullwatchv1.ImageReport)) *pullwatchv1.AgentMessage {
			return snapshot(1, "node-a", img("ok:1"), imgWith("bad:1", edit))
		}
		snapshotOK = snapshot(1, "node-a", img("a:1"))
	)
	tests := []struct {
		name     string
		before   []*pullwatchv1.AgentMessage // accepted first
		msg      *pullwatchv1.AgentMessage
		wantCode codes.Code
		reason   Reason
		wantMsg  string // substring of the status message
	}{
		{"no body", nil, &pullwatchv1.AgentMessage{Sequence: 1},
			codes.InvalidArgument, ReasonNoBody, "neither snapshot nor update"},
		{"sequence zero", nil, snapshot(0, "node-a"),
			codes.InvalidArgument, ReasonBadSequence, "sequence: 0 after 0"},
		{"sequence repeated", []*pullwatchv1.AgentMessage{snapshotOK}, update(1, "node-a", nil),
			codes.InvalidArgument, ReasonBadSequence, "sequence: 1 after 1"},
		{"snapshot without node", nil, &pullwatchv1.AgentMessage{Sequence: 1, Body: &pullwatchv1.AgentMessage_Snapshot{Snapshot: &pullwatchv1.NodeSnapshot{}}},
			codes.InvalidArgument, ReasonInvalidNode, "snapshot.node.name: empty"},
		{"empty node name", nil, snapshot(1, ""),
			codes.InvalidArgument, ReasonInvalidNode, "snapshot.node.name: empty"},
		{"node name not DNS-1123", nil, snapshot(1, "Node_A"),
			codes.InvalidArgument, ReasonInvalidNode, `snapshot.node.name: "Node_A" is not a valid node name`},
		{"node name too long", nil, snapshot(1, strings.Repeat("a", 254)),
			codes.InvalidArgument, ReasonInvalidNode, "must be no more than 253"},
		{"update with empty node name", []*pullwatchv1.AgentMessage{snapshotOK}, update(2, "", nil),
			codes.InvalidArgument, ReasonInvalidNode, "update.node_name: empty"},
		{"update for another node", []*pullwatchv1.AgentMessage{snapshotOK}, update(2, "node-b", nil),
			codes.InvalidArgument, ReasonNodeMismatch, `update.node_name: "node-b", but this stream reports node "node-a"`},
		{"snapshot for another node", []*pullwatchv1.AgentMessage{snapshotOK}, snapshot(2, "node-b"),
			codes.InvalidArgument, ReasonNodeMismatch, `snapshot.node.name: "node-b", but this stream reports node "node-a"`},
		{"empty image", nil, bad(func(im *pullwatchv1.ImageReport) { im.Image = "" }),
			codes.InvalidArgument, ReasonInvalidImage, "snapshot.images[1].image: empty"},
		{"duplicate image", nil, snapshot(1, "node-a", img("a:1"), img("a:1")),
			codes.InvalidArgument, ReasonInvalidImage, `snapshot.images[1].image: "a:1" is listed twice`},
		{"upserted and removed", []*pullwatchv1.AgentMessage{snapshotOK}, update(2, "node-a", []*pullwatchv1.ImageReport{img("a:1")}, "a:1"),
			codes.InvalidArgument, ReasonInvalidImage, `update.upserts[0].image: "a:1" is also in removed_images`},
		{"empty removed image", []*pullwatchv1.AgentMessage{snapshotOK}, update(2, "node-a", nil, ""),
			codes.InvalidArgument, ReasonInvalidImage, "update.removed_images[0]: empty"},
		{"status unspecified", nil, bad(func(im *pullwatchv1.ImageReport) { im.Status = pullwatchv1.ImageStatus_IMAGE_STATUS_UNSPECIFIED }),
			codes.InvalidArgument, ReasonInvalidStatus, "snapshot.images[1].status: IMAGE_STATUS_UNSPECIFIED (0) is never valid"},
		{"status unknown number", nil, bad(func(im *pullwatchv1.ImageReport) { im.Status = 42 }),
			codes.InvalidArgument, ReasonInvalidStatus, "snapshot.images[1].status: unknown value 42"},
		{"endpoint status unspecified", nil, bad(func(im *pullwatchv1.ImageReport) { im.Endpoints[0].Status = 0 }),
			codes.InvalidArgument, ReasonInvalidStatus, "snapshot.images[1].endpoints[0].status: IMAGE_STATUS_UNSPECIFIED"},
		{"endpoint status unknown number in update", []*pullwatchv1.AgentMessage{snapshotOK},
			update(2, "node-a", []*pullwatchv1.ImageReport{imgWith("b:1", func(im *pullwatchv1.ImageReport) { im.Endpoints[0].Status = 99 })}),
			codes.InvalidArgument, ReasonInvalidStatus, "update.upserts[0].endpoints[0].status: unknown value 99"},
		{"endpoint role unspecified", nil, bad(func(im *pullwatchv1.ImageReport) { im.Endpoints[0].Role = 0 }),
			codes.InvalidArgument, ReasonInvalidRole, "snapshot.images[1].endpoints[0].role: ENDPOINT_ROLE_UNSPECIFIED (0) is not valid"},
		{"endpoint role unknown number", nil, bad(func(im *pullwatchv1.ImageReport) { im.Endpoints[0].Role = 7 }),
			codes.InvalidArgument, ReasonInvalidRole, "snapshot.images[1].endpoints[0].role: unknown value 7"},
		{"too many images", nil, snapshot(1, "node-a", images(MaxImages+1, func(*pullwatchv1.ImageReport) {})...),
			codes.InvalidArgument, ReasonTooManyImages, "snapshot.images: 5001 images, limit 5000"},
		{"too many upserts and removals", []*pullwatchv1.AgentMessage{snapshotOK},
			update(2, "node-a", images(MaxImages, func(*pullwatchv1.ImageReport) {}), "gone:1"),
			codes.InvalidArgument, ReasonTooManyImages, "update: 5001 upserts plus removed_images, limit 5000"},
		{"too many endpoints", nil, bad(func(im *pullwatchv1.ImageReport) {
			for range maxEndpoints {
				im.Endpoints = append(im.Endpoints, im.Endpoints[0])
			}
		}),
			codes.InvalidArgument, ReasonTooManyItems, "snapshot.images[1].endpoints: 33 entries, limit 32"},
		{"reason too long", nil, bad(func(im *pullwatchv1.ImageReport) { im.Reason = strings.Repeat("r", maxReason+1) }),
			codes.InvalidArgument, ReasonFieldTooLong, "snapshot.images[1].reason: 1025 bytes, limit 1024"},
		{"image reference too long", nil, bad(func(im *pullwatchv1.ImageReport) { im.Image = strings.Repeat("i", maxImageRef+1) }),
			codes.InvalidArgument, ReasonFieldTooLong, "snapshot.images[1].image: 513 bytes, limit 512"},
		{"endpoint url too long", nil, bad(func(im *pullwatchv1.ImageReport) { im.Endpoints[0].Url = strings.Repeat("u", maxURL+1) }),
			codes.InvalidArgument, ReasonFieldTooLong, "snapshot.images[1].endpoints[0].url: 2049 bytes, limit 2048"},
		{"container field too long", nil, bad(func(im *pullwatchv1.ImageReport) {
			im.Containers = []*pullwatchv1.ContainerRef{{Namespace: "default", Pod: strings.Repeat("p", maxShort+1)}}
		}),
			codes.InvalidArgument, ReasonFieldTooLong, "snapshot.images[1].containers[0].pod: 257 bytes, limit 256"},
		{"node label value too long", nil, &pullwatchv1.AgentMessage{Sequence: 1, Body: &pullwatchv1.AgentMessage_Snapshot{Snapshot: &pullwatchv1.NodeSnapshot{
			Node: &pullwatchv1.Node{Name: "node-a", Labels: map[string]string{"zone": strings.Repeat("z", maxShort+1)}},
		}}},
			codes.InvalidArgument, ReasonFieldTooLong, `snapshot.node.labels["zone"]: 257 bytes, limit 256`},
		// Valid but over the server's 1 MiB: the server refuses it.
		{"over max report bytes", nil, snapshot(1, "node-a", images(1100, func(im *pullwatchv1.ImageReport) { im.Reason = strings.Repeat("r", 1000) })...),
			codes.InvalidArgument, ReasonTooLarge, "larger than max 1048576 (the aggregator's --max-report-bytes)"},
		// Past the wire slack too: gRPC refuses it before reading it.
		{"far over max report bytes", nil, snapshot(1, "node-a", images(2500, func(im *pullwatchv1.ImageReport) { im.Reason = strings.Repeat("r", 1000) })...),
			codes.ResourceExhausted, ReasonTooLarge, "larger than max"},
	}

	// One server for every case: each refusal must end only its own stream.
	h := newHarness(t)
	bystander := h.open(t)
	mustAck(t, bystander, snapshot(1, "bystander"))
	bystanderSeq := uint64(1)

	// A problem inside one image report refuses that image only: the
	// message is acknowledged, the other images kept, the refused one
	// shown unknown (or left out when its reference is unusable).
	imageOnly := map[string][]string{
		"empty image":                              {"ok:1=available"},
		"duplicate image":                          {"a:1=available"},
		"upserted and removed":                     nil,
		"status unspecified":                       {"ok:1=available", "bad:1=unknown"},
		"status unknown number":                    {"ok:1=available", "bad:1=unknown"},
		"endpoint status unspecified":              {"ok:1=available", "bad:1=unknown"},
		"endpoint status unknown number in update": {"a:1=available", "b:1=unknown"},
		"endpoint role unspecified":                {"ok:1=available", "bad:1=unknown"},
		"endpoint role unknown number":             {"ok:1=available", "bad:1=unknown"},
		"too many endpoints":                       {"ok:1=available", "bad:1=unknown"},
		"reason too long":                          {"ok:1=available", "bad:1=unknown"},
		"image reference too long":                 {"ok:1=available"},
		"endpoint url too long":                    {"ok:1=available", "bad:1=unknown"},
		"container field too long":                 {"ok:1=available", "bad:1=unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := h.obs.rejectedCount(tt.reason)
			rs := h.open(t)
			for _, msg := range tt.before {
				mustAck(t, rs, msg)
			}
			if want, ok := imageOnly[tt.name]; ok {
				refusedBefore := h.obs.refusedCount(tt.reason)
				mustAck(t, rs, tt.msg)
				if got := h.obs.refusedCount(tt.reason) - refusedBefore; got != 1 {
					t.Errorf("image refusals{reason=%q} grew by %d, want 1", tt.reason, got)
				}
				if got := h.obs.rejectedCount(tt.reason) - before; got != 0 {
					t.Errorf("message rejections{reason=%q} grew by %d, want 0", tt.reason, got)
				}
				if tt.name == "upserted and removed" {
					return // a:1 removed; the upsert refused
				}
				got := nodeImages(t, h.store, "node-a")
				slices.Sort(got)
				want = slices.Sorted(slices.Values(want))
				if strings.Join(got, " ") != strings.Join(want, " ") {
					t.Errorf("node-a images = %v, want %v", got, want)
				}
				return
			}
			_, err := exchange(rs, tt.msg)
			st, _ := status.FromError(err)
			if st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			// Waiting, because for too_large gRPC sends the status to the
			// agent before the handler sees the error and counts it.
			waitFor(t, fmt.Sprintf("rejected{reason=%q} grows by 1", tt.reason),
				func() bool { return h.obs.rejectedCount(tt.reason)-before == 1 })

			// The server keeps serving: a new stream works, and so does
			// the stream that was open all along.
			mustAck(t, h.open(t), snapshot(1, "node-after"))
			bystanderSeq++
			mustAck(t, bystander, update(bystanderSeq, "bystander", []*pullwatchv1.ImageReport{img("a:1")}))
		})
	}
}

func TestConnectedAgentsFollowsStreams(t *testing.T) {
	h := newHarness(t)
	rs := h.open(t)
	mustAck(t, rs, snapshot(1, "node-a"))
	if got := h.store.ConnectedAgents(); got != 1 {
		t.Fatalf("ConnectedAgents = %d with one stream open, want 1", got)
	}
	if err := rs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("Recv after CloseSend: %v, want EOF", err)
	}
	waitFor(t, "ConnectedAgents drops to 0", func() bool { return h.store.ConnectedAgents() == 0 })
}

func TestDrainEndsStreamsWithUnavailable(t *testing.T) {
	h := newHarness(t)
	rs := h.open(t)
	mustAck(t, rs, snapshot(1, "node-a"))
	h.srv.Drain()
	h.srv.Drain() // idempotent
	if _, err := rs.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("Recv after Drain: %v, want Unavailable", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
