package ingest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// holdingSharder holds every message in Ingest until release is closed,
// counting the messages that reached it.
type holdingSharder struct {
	reached atomic.Int32
	release chan struct{}
}

func (h *holdingSharder) Watch(string) (<-chan struct{}, func()) { return nil, func() {} }
func (h *holdingSharder) Ingest(_ string, _ *pullwatchv1.Node, _ bool, _ []*pullwatchv1.ImageReport, _ []string, apply func()) {
	h.reached.Add(1)
	<-h.release
	apply()
}
func (h *holdingSharder) DirectiveSince(string, string) *pullwatchv1.ProbeAssignments { return nil }

// While the planner holds the messages it was given, no more than the
// gate's slots are decoded; the others wait, encoded, and are all applied
// once the planner goes on.
func TestGateBoundsDecodedMessages(t *testing.T) {
	const slots, agents = 2, 8
	sh := &holdingSharder{release: make(chan struct{})}
	h := newHarness(t, func(s *Server) {
		s.gate = newGate(slots)
		s.SetSharder(sh)
	})
	var wg sync.WaitGroup
	errs := make(chan error, agents)
	for i := range agents {
		rs := h.open(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ack, err := exchange(rs, snapshot(1, fmt.Sprintf("node-%d", i)))
			if err != nil || ack.GetSequence() != 1 {
				errs <- fmt.Errorf("node-%d: ack %v, %v", i, ack, err)
			}
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for sh.reached.Load() < slots && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // time for a message past the gate to show
	if got := sh.reached.Load(); got != slots {
		t.Errorf("%d messages decoded and handed to the planner while it held them, want the gate's %d", got, slots)
	}
	close(sh.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := sh.reached.Load(); got != agents {
		t.Errorf("%d messages reached the planner, want %d", got, agents)
	}
	if n := len(h.srv.gate.slots); n != 0 {
		t.Errorf("%d slots still taken after every message was applied", n)
	}
}
