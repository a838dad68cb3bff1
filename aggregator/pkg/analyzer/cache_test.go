package analyzer

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

func TestDiagnosisReusedUntilInputChanges(t *testing.T) {
	now := time.Unix(1000, 0)
	store := state.New(time.Minute, state.WithClock(func() time.Time { return now }))
	store.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: "n1"}, Images: []*pullwatchv1.ImageReport{image("a:1", available, upOK)}})
	a := NewAnalyzer(store, nil, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	ctx := context.Background()
	r1, g1 := a.Diagnosis(ctx)
	now = now.Add(10 * time.Second)
	store.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "n1"}) // a quiet update: only freshness
	r2, g2 := a.Diagnosis(ctx)
	if g1 != g2 {
		t.Fatalf("generation moved from %d to %d on a quiet update", g1, g2)
	}
	if &r1.Images[0] != &r2.Images[0] || !r2.Nodes[0].LastReport.Equal(now) {
		t.Fatalf("quiet update: findings recomputed or LastReport %v not brought up to date (%v)", r2.Nodes[0].LastReport, now)
	}
	store.ApplyUpdate(&pullwatchv1.NodeUpdate{NodeName: "n1", Upserts: []*pullwatchv1.ImageReport{image("a:1", absent, upAbsent)}})
	if _, g3 := a.Diagnosis(ctx); g3 == g2 {
		t.Fatal("generation unchanged after an image changed")
	}
	_, g4 := a.Diagnosis(ctx)
	now = now.Add(2 * time.Minute) // the node goes stale
	if _, g5 := a.Diagnosis(ctx); g5 == g4 {
		t.Fatal("generation unchanged after the node went stale")
	}
}

func TestChangeLogsRateLimited(t *testing.T) {
	store := state.New(time.Minute)
	var logs bytes.Buffer
	a := NewAnalyzer(store, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	var images []*pullwatchv1.ImageReport
	for i := range 500 {
		images = append(images, image(fmt.Sprintf("img-%d:1", i), absent, upAbsent))
	}
	store.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: "n1"}, Images: images})
	a.Analyze(context.Background())
	if n := strings.Count(logs.String(), `msg="diagnosis changed"`); n > changeBurst+1 {
		t.Fatalf("%d change lines for 500 changes at once, want at most %d", n, changeBurst+1)
	}
	// The count of what was held back is written once the budget allows.
	time.Sleep(1100 * time.Millisecond)
	a.mu.Lock()
	a.flushSuppressed(context.Background())
	a.mu.Unlock()
	if !strings.Contains(logs.String(), "diagnosis changes not logged") || !strings.Contains(logs.String(), "suppressed=") {
		t.Fatalf("no suppressed count in the log:\n%s", logs.String()[max(0, logs.Len()-500):])
	}
}
