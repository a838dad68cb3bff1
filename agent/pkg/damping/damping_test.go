package damping

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/agent/pkg/report"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

const (
	ok    = pb.ImageStatus_IMAGE_STATUS_AVAILABLE
	down  = pb.ImageStatus_IMAGE_STATUS_UNREACHABLE
	gone  = pb.ImageStatus_IMAGE_STATUS_ABSENT
	image = "127.0.0.1:5000/app:v1"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// round applies one round in which the image has status st and returns
// what the damper lets through.
func round(d *Damper, c *clock, st pb.ImageStatus) report.Image {
	c.t = c.t.Add(time.Minute)
	n := report.Node{Images: []report.Image{{Image: image, Outcome: report.Outcome{Status: st, Reason: st.Word()}}}}
	d.Apply(&n)
	return n.Images[0]
}

func TestConfirm(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	d := New(Options{Confirm: 2, Now: c.now})
	first := round(d, c, down) // first check: immediate
	if first.Status != down || !first.StatusSince.Equal(c.t) {
		t.Fatalf("first check: %v since %v, want unreachable since %v", first.Status, first.StatusSince, c.t)
	}
	start := c.t
	up := round(d, c, ok) // to available: immediate
	if up.Status != ok || !up.StatusSince.Equal(c.t) {
		t.Fatalf("recovery: %v since %v", up.Status, up.StatusSince)
	}
	upSince := c.t
	// A registry failing every other probe: never confirmed.
	for i := range 6 {
		st := down
		if i%2 == 1 {
			st = ok
		}
		got := round(d, c, st)
		if got.Status != ok || got.Reason != "available" || !got.StatusSince.Equal(upSince) {
			t.Fatalf("flap %d (%v): reported %v %q since %v, want available since %v", i, st, got.Status, got.Reason, got.StatusSince, upSince)
		}
	}
	// Two failures in a row: confirmed, since the first of them.
	round(d, c, gone)
	firstGone := c.t
	got := round(d, c, gone)
	if got.Status != gone || !got.StatusSince.Equal(firstGone) {
		t.Fatalf("confirmed: %v since %v, want absent since %v", got.Status, got.StatusSince, firstGone)
	}
	// Two different failures do not confirm each other.
	round(d, c, down)
	if got := round(d, c, gone); got.Status != gone || !got.StatusSince.Equal(firstGone) {
		t.Fatalf("mixed: %v since %v", got.Status, got.StatusSince)
	}
	_ = start
}

func TestNoDamping(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	d := New(Options{Confirm: 1, Now: c.now})
	round(d, c, ok)
	if got := round(d, c, down); got.Status != down || !got.StatusSince.Equal(c.t) {
		t.Fatalf("confirm 1: %v since %v", got.Status, got.StatusSince)
	}
}

func TestStateFileSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	c := &clock{t: time.Unix(1_000_000, 0)}
	d := New(Options{Confirm: 2, StateFile: path, Now: c.now})
	round(d, c, gone)
	since := c.t

	d = New(Options{Confirm: 2, StateFile: path, Now: c.now}) // restart
	if got := round(d, c, gone); got.Status != gone || !got.StatusSince.Equal(since) {
		t.Fatalf("after restart: %v since %v, want absent since %v", got.Status, got.StatusSince, since)
	}
	d = New(Options{Confirm: 2, StateFile: path, Now: c.now}) // restart
	// A blip right after a restart is still held back.
	if got := round(d, c, down); got.Status != gone || got.Reason != "absent" {
		t.Fatalf("blip after restart: %v %q, want the absent result held", got.Status, got.Reason)
	}
	// An image the node dropped is forgotten, in the file too.
	d.Apply(&report.Node{})
	d = New(Options{Confirm: 2, StateFile: path, Now: c.now})
	if got := round(d, c, down); got.Status != down || !got.StatusSince.Equal(c.t) {
		t.Fatalf("forgotten image: %v since %v, want a first check", got.Status, got.StatusSince)
	}
}

func TestStateFileOfAnotherNode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	c := &clock{t: time.Unix(1_000_000, 0)}
	d := New(Options{Confirm: 2, Node: "node-a", StateFile: path, Now: c.now})
	round(d, c, gone)
	d = New(Options{Confirm: 2, Node: "node-b", StateFile: path, Now: c.now})
	if got := round(d, c, down); got.Status != down || !got.StatusSince.Equal(c.t) {
		t.Fatalf("node-b used node-a's state: %v since %v", got.Status, got.StatusSince)
	}
}

func TestBadStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	if err := writeFile(path, "{not json"); err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Unix(1_000_000, 0)}
	d := New(Options{Confirm: 2, StateFile: path, Now: c.now})
	if got := round(d, c, down); got.Status != down {
		t.Fatalf("fresh start: %v", got.Status)
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }
