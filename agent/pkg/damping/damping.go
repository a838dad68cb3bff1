// Package damping is the agent's flap damping: an image's reported status
// changes only after Confirm consecutive rounds agree on the new status,
// except a change to available (at once: a recovery is never held back)
// and the first check of an image (at once: nothing to hold). While a
// change waits for confirmation the previous result is reported whole, so
// the stream sends nothing for a blip and the aggregator never sees it.
//
// It also keeps, per image, since when the node has seen the current
// status (report.Image.StatusSince), and can keep both in a small JSON
// state file so that an agent restart neither resets "since" nor lets a
// blip through.
package damping

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pullwatch/pullwatch/agent/pkg/report"
	"github.com/pullwatch/pullwatch/pkg/logging"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// DefaultConfirm is the default of --confirm.
const DefaultConfirm = 2

// Rounds runs one round (round.Checker, daemon.Rounds).
type Rounds interface {
	Run(ctx context.Context) (report.Node, error)
}

// Damper holds each image's reported result. It is safe for concurrent
// use; the daemon calls it once per round.
type Damper struct {
	confirm int
	node    string
	path    string
	log     *slog.Logger
	now     func() time.Time

	mu     sync.Mutex
	images map[string]*track
}

// track is one image's damping state. Reported and Since are what the
// state file keeps.
type track struct {
	Reported report.Outcome `json:"reported"`
	Since    time.Time      `json:"since"`

	pending      pb.ImageStatus
	pendingCount int
	pendingSince time.Time
}

// stateFile is the state file's layout; Version guards later changes.
type stateFile struct {
	Version int `json:"version"`
	// Node is the node the state is about: a file another node wrote
	// (a host path shared by mistake) is not used.
	Node   string            `json:"node"`
	Images map[string]*track `json:"images"`
}

const stateVersion = 1

// Options configure a Damper.
type Options struct {
	// Confirm is how many consecutive rounds must agree before a status
	// other than available replaces the reported one. 1 or less: no
	// damping (since is still kept).
	Confirm int
	// Node is this node's name, kept in the state file and checked on
	// reading it.
	Node string
	// StateFile, when set, is where the reported results and their
	// since times are kept across restarts. It is read by New and
	// rewritten (atomically) after every round that changed it.
	StateFile string
	Log       *slog.Logger
	// Now replaces time.Now, for tests.
	Now func() time.Time
}

// New returns a Damper. A state file that cannot be read is logged and
// ignored (the agent starts afresh: first checks are immediate).
func New(opts Options) *Damper {
	d := &Damper{confirm: opts.Confirm, node: opts.Node, path: opts.StateFile, log: opts.Log, now: opts.Now, images: map[string]*track{}}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.path != "" {
		if err := d.load(); err != nil {
			d.log.Warn("flap damping: state file unreadable; starting afresh", "path", d.path, logging.ErrKey, err)
		} else {
			d.log.Info("flap damping: state loaded", "path", d.path, "images", len(d.images))
		}
	}
	return d
}

// Wrap returns Rounds whose every successful round is passed through d.
func (d *Damper) Wrap(r Rounds) Rounds { return wrapped{d: d, inner: r} }

type wrapped struct {
	d     *Damper
	inner Rounds
}

func (w wrapped) Run(ctx context.Context) (report.Node, error) {
	n, err := w.inner.Run(ctx)
	if err != nil {
		return n, err
	}
	w.d.Apply(&n)
	return n, nil
}

// key names an image across rounds: its reference, or its image id when
// the agent could not map it to one.
func key(im *report.Image) string {
	if im.Image != "" {
		return im.Image
	}
	return "id:" + im.ImageID
}

// Apply damps the round's results in place and sets every image's
// StatusSince. Images the node no longer has are forgotten.
func (d *Damper) Apply(n *report.Node) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	seen := make(map[string]bool, len(n.Images))
	changed := false
	for i := range n.Images {
		im := &n.Images[i]
		k := key(im)
		seen[k] = true
		if d.step(k, im, now) {
			changed = true
		}
	}
	for k := range d.images {
		if !seen[k] {
			delete(d.images, k)
			changed = true
		}
	}
	if changed && d.path != "" {
		if err := d.save(); err != nil {
			d.log.Warn("flap damping: cannot write state file", "path", d.path, logging.ErrKey, err)
		}
	}
}

// step damps one image and reports whether what the state file keeps
// changed.
func (d *Damper) step(k string, im *report.Image, now time.Time) (changed bool) {
	t, ok := d.images[k]
	switch {
	case !ok:
		// First check: immediate.
		t = &track{Reported: im.Outcome, Since: now}
		d.images[k] = t
		changed = true
	case im.Status == t.Reported.Status:
		t.Reported = im.Outcome
		t.pendingCount = 0
	case im.Status == pb.ImageStatus_IMAGE_STATUS_AVAILABLE || d.confirm <= 1:
		d.log.Info("image status changed", "image", k, "from", t.Reported.Status.Word(), "to", im.Status.Word())
		t.Reported, t.Since, t.pendingCount = im.Outcome, now, 0
		changed = true
	default:
		if t.pendingCount == 0 || t.pending != im.Status {
			t.pending, t.pendingCount, t.pendingSince = im.Status, 0, now
		}
		t.pendingCount++
		if t.pendingCount < d.confirm {
			d.log.Debug("image status change not confirmed yet", "image", k, "reported", t.Reported.Status.Word(),
				"seen", im.Status.Word(), "times", t.pendingCount, "confirm", d.confirm)
			// Report the previous result whole: the stream then has
			// nothing to send for this image.
			im.Outcome = t.Reported
			break
		}
		d.log.Info("image status changed", "image", k, "from", t.Reported.Status.Word(), "to", im.Status.Word(), "confirmed_by", t.pendingCount)
		t.Reported, t.Since, t.pendingCount = im.Outcome, t.pendingSince, 0
		changed = true
	}
	since := t.Since
	im.StatusSince = &since
	return changed
}

func (d *Damper) load() error {
	b, err := os.ReadFile(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("decode %s: %w", d.path, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("%s: state version %d, want %d", d.path, st.Version, stateVersion)
	}
	if st.Node != d.node {
		return fmt.Errorf("%s: state of node %q, this is node %q", d.path, st.Node, d.node)
	}
	for k, t := range st.Images {
		if t != nil && t.Reported.Status.Valid() {
			d.images[k] = t
		}
	}
	return nil
}

// save writes the state file through a temporary file and a rename, so
// a crash leaves the old or the new file, never half of one.
func (d *Damper) save() error {
	b, err := json.Marshal(stateFile{Version: stateVersion, Node: d.node, Images: d.images})
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	dir := filepath.Dir(d.path)
	f, err := os.CreateTemp(dir, ".pullwatch-state-*")
	if err != nil {
		return fmt.Errorf("state file in %s: %w", dir, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), d.path); err != nil {
		return fmt.Errorf("replace %s: %w", d.path, err)
	}
	return nil
}
