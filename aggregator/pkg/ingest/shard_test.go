package ingest

import (
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/aggregator/pkg/shard"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// directed reads until the ack of seq, then waits for a Directive with
// probe assignments (it may come before or after the ack).
func directed(t *testing.T, rs pullwatchv1.ReportService_ReportClient, seq uint64) *pullwatchv1.ProbeAssignments {
	t.Helper()
	var pa *pullwatchv1.ProbeAssignments
	acked := false
	for !acked || pa == nil {
		m, err := rs.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if a := m.GetAck(); a != nil && a.GetSequence() == seq {
			acked = true
		}
		if d := m.GetDirective().GetProbeAssignments(); d != nil {
			pa = d
		}
	}
	return pa
}

func TestShardingSendsAssignmentsAndSharesResults(t *testing.T) {
	h := newHarness(t, func(s *Server) {
		s.SetSharder(shard.New(shard.Options{Replicas: 1, Sink: s.store}))
	})
	const ref = "docker.io/library/nginx:1.27"
	a, b := h.open(t), h.open(t)
	if err := a.Send(snapshot(1, "node-a", img(ref))); err != nil {
		t.Fatal(err)
	}
	if pa := directed(t, a, 1); len(pa.GetDelegated()) != 0 {
		t.Fatalf("node-a alone has the image, yet delegates it: %v", pa)
	}
	if err := b.Send(snapshot(1, "node-b", img(ref))); err != nil {
		t.Fatal(err)
	}
	pb := directed(t, b, 1)
	// One of the two probes, the other is told to leave it.
	var prober, other pullwatchv1.ReportService_ReportClient
	otherName := "node-b"
	switch {
	case len(pb.GetDelegated()) == 1:
		prober, other = a, b
	case len(pb.GetAssigned()) == 1:
		prober, other, otherName = b, a, "node-a"
		pa := directed(t, a, 1) // node-a's plan changed: it is delegated now
		for len(pa.GetDelegated()) != 1 {
			pa = directed(t, a, 1)
		}
	default:
		t.Fatalf("node-b's plan %v", pb)
	}
	del := img(ref)
	del.Delegated = true
	mustAckSkipping(t, other, snapshot(2, otherName, del))
	gone := img(ref)
	gone.Status = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
	gone.Endpoints[0].Status = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
	gone.Endpoints[0].HttpStatus = 404
	proberName := "node-a"
	if otherName == "node-a" {
		proberName = "node-b"
	}
	mustAckSkipping(t, prober, update(2, proberName, []*pullwatchv1.ImageReport{gone}))
	waitFor(t, "the prober's absent shared with "+otherName, func() bool {
		for _, n := range h.store.Nodes() {
			if n.Name == otherName {
				return len(n.Images) == 1 && n.Images[0].GetStatus() == pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT && n.Images[0].GetSharedFrom() != ""
			}
		}
		return false
	})
}

// mustAckSkipping is mustAck, letting Directives pass.
func mustAckSkipping(t *testing.T, rs pullwatchv1.ReportService_ReportClient, msg *pullwatchv1.AgentMessage) {
	t.Helper()
	if err := rs.Send(msg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		m, err := rs.Recv()
		if err != nil {
			t.Fatalf("message %d: %v", msg.GetSequence(), err)
		}
		if m.GetAck().GetSequence() == msg.GetSequence() {
			return
		}
	}
	t.Fatalf("no ack for %d", msg.GetSequence())
}
