// Package analyzer feeds diagnose from the state store and the Kubernetes
// API's view of nodes, and logs every change of a finding. diagnose itself
// stays a pure function of its input.
package analyzer

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
	"github.com/pullwatch/pullwatch/aggregator/pkg/imagefilter"
	"github.com/pullwatch/pullwatch/aggregator/pkg/kubewatch"
	"github.com/pullwatch/pullwatch/aggregator/pkg/risk"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

// Directory is what the Kubernetes API says about nodes.
type Directory interface {
	// Node returns the node's zone label and whether the API has a Node
	// of that name. synced is false until the API's node list has been
	// loaded; then nothing is known and exists is meaningless.
	Node(name string) (zone string, exists, synced bool)
}

// Inputs turns the store's views into diagnose.Diagnose's input. The zone comes
// from the Node object when dir has it, else from the label the agent
// sent; a node is unregistered when dir is synced and has no such Node.
// dir may be nil (no Kubernetes API): nothing is unregistered then.
//
// filter (nil: everything) drops the images that are not watched, so
// every reader of the diagnosis sees the same images.
func Inputs(views []state.NodeView, dir Directory, filter *imagefilter.Filter) []diagnose.Node {
	out := make([]diagnose.Node, len(views))
	for i, v := range views {
		n := diagnose.Node{Name: v.Name, Stale: v.Stale, Images: filter.Reports(v.Images), Zone: v.Info.GetLabels()[diagnose.ZoneLabel], Info: v.Info, LastReport: v.LastReport}
		if dir != nil {
			zone, exists, synced := dir.Node(v.Name)
			switch {
			case synced && !exists:
				n.Unregistered = true
			case exists && zone != "":
				n.Zone = zone
			}
		}
		out[i] = n
	}
	return out
}

// Analyzer diagnoses the store's current state and logs every change of
// a finding's scope (or of the zones of a zone-scope finding), one line
// per change. It is safe for concurrent use; analyses are serialized so
// that changes are logged in order.
type Analyzer struct {
	store *state.Store
	dir   Directory
	log   *slog.Logger
	opts  Options

	mu       sync.Mutex
	last     map[subject]verdict
	lastRisk *risk.Assessment
	riskAt   time.Time

	// The latest diagnosis and what it was computed from: the store's
	// version and each node's name, zone, staleness and registration.
	// The store drops it (OnChange) as soon as it changes: the diagnosis
	// is computed again then anyway, and until then it would keep every
	// node's previous images in memory (during a round of snapshots, the
	// whole previous state).
	report     atomic.Pointer[diagnose.Report]
	version    uint64
	inputs     []nodeKey
	generation uint64

	// changeLog bounds "diagnosis changed" lines; suppressed counts the
	// lines it held back since the last one written.
	changeLog  *rate.Limiter
	suppressed int
}

// Pods lists the pods bound to nodes (kubewatch.Watcher).
type Pods interface {
	// OwnersSynced reports whether the pods (and their owners) are loaded.
	OwnersSynced() bool
	Pods() []kubewatch.PodFacts
}

// Options add to what an Analyzer does.
type Options struct {
	// Filter drops the images and namespaces that are not watched.
	Filter *imagefilter.Filter
	// Pods, when set, turns on the risk assessment (Risk).
	Pods Pods
	// OnAnalysis is called, under the analysis lock, after every
	// analysis (the node condition writer).
	OnAnalysis func(ctx context.Context, r *diagnose.Report)
}

// nodeKey is what of a node's input can change without the store's
// version changing.
type nodeKey struct {
	name, zone          string
	stale, unregistered bool
}

// The "diagnosis changed" log budget: a burst of changeBurst lines, then
// changeRate per second. A registry outage changes every image's finding
// at once; past the budget one line says how many were not logged.
const (
	changeBurst = 50
	changeRate  = 1
)

// subject is what a finding is about: an endpoint or an image.
type subject struct {
	endpoint diagnose.EndpointKey
	image    string
}

type verdict struct {
	scope diagnose.Scope
	zones string
}

// NewAnalyzer returns an Analyzer of store; dir may be nil.
func NewAnalyzer(store *state.Store, dir Directory, log *slog.Logger) *Analyzer {
	return NewAnalyzerWith(store, dir, log, Options{})
}

// NewAnalyzerWith returns an Analyzer of store with opts; dir may be nil.
func NewAnalyzerWith(store *state.Store, dir Directory, log *slog.Logger, opts Options) *Analyzer {
	a := &Analyzer{store: store, dir: dir, log: log, opts: opts, last: map[subject]verdict{},
		changeLog: rate.NewLimiter(changeRate, changeBurst)}
	store.OnChange(func() { a.report.Store(nil) })
	return a
}

// Risk returns the risk assessment of the latest analysis: nil without
// Options.Pods, or until the pods are loaded. Call it after Analyze.
func (a *Analyzer) Risk() *risk.Assessment {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastRisk
}

// Analyze diagnoses the store as it is now and logs what changed since
// the previous analysis.
func (a *Analyzer) Analyze(ctx context.Context) *diagnose.Report {
	r, _ := a.Diagnosis(ctx)
	return r
}

// Diagnosis is Analyze, and the generation of the diagnosis: a number
// that changes exactly when the diagnosis was computed again because its
// input changed (a report that changed images, a node forgotten, gone
// stale, registered or moved zone). While the input stays the same the
// previous diagnosis is reused, with only each node's LastReport brought
// up to date, so callers may cache what they derive from a generation.
// The returned report is shared: do not modify it.
func (a *Analyzer) Diagnosis(ctx context.Context) (*diagnose.Report, uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	version := a.store.Version()
	// The images are filtered only when the diagnosis is computed again
	// below: the cached one does not look at them.
	in := Inputs(a.store.Nodes(), a.dir, nil)
	keys := make([]nodeKey, len(in))
	for i, n := range in {
		keys[i] = nodeKey{name: n.Name, zone: n.Zone, stale: n.Stale, unregistered: n.Unregistered}
	}
	if cached := a.report.Load(); cached != nil && version == a.version && slices.Equal(keys, a.inputs) {
		// Same input but for report times: a copy with those updated,
		// sharing everything else.
		r := *cached
		r.Nodes = slices.Clone(cached.Nodes)
		for i := range r.Nodes {
			r.Nodes[i].LastReport = in[i].LastReport
		}
		// Pods change without the store: the risk is assessed again
		// when it is older than riskEvery.
		if time.Since(a.riskAt) >= riskEvery {
			a.assessRisk(cached)
		}
		return &r, a.generation
	}
	for i := range in {
		in[i].Images = a.opts.Filter.Reports(in[i].Images)
	}
	r := diagnose.Diagnose(in)
	a.report.Store(r)
	a.version, a.inputs = version, keys
	a.generation++
	a.observe(ctx, r)
	a.assessRisk(r)
	if a.opts.OnAnalysis != nil {
		a.opts.OnAnalysis(ctx, r)
	}
	return r, a.generation
}

// riskEvery bounds how stale the risk assessment gets while the diagnosis
// stays the same (pods come and go without a report).
const riskEvery = 5 * time.Second

// assessRisk assesses r against the pods, under a.mu.
func (a *Analyzer) assessRisk(r *diagnose.Report) {
	p := a.opts.Pods
	if p == nil || !p.OwnersSynced() {
		return
	}
	var filter risk.Filter
	if a.opts.Filter.Active() {
		filter = a.opts.Filter
	}
	a.lastRisk = risk.Assess(r, p.Pods(), filter)
	a.riskAt = time.Now()
}

// Run analyzes every interval until ctx ends, so that changes are logged
// even when nobody scrapes.
func (a *Analyzer) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.Analyze(ctx)
			a.mu.Lock()
			a.flushSuppressed(ctx)
			a.mu.Unlock()
		}
	}
}

// maxLoggedNodes bounds the node names in one log line.
const maxLoggedNodes = 10

func (a *Analyzer) observe(ctx context.Context, r *diagnose.Report) {
	seen := make(map[subject]bool, len(r.Endpoints)+len(r.Images))
	for _, f := range r.Endpoints {
		s := subject{endpoint: f.EndpointKey}
		seen[s] = true
		a.compare(ctx, s, verdict{f.Scope, strings.Join(f.Zones, ",")}, func() []any {
			return []any{"registry", f.Registry, "endpoint", f.URL, "role", f.Role,
				"failing_nodes", len(f.Failing), "of_nodes", f.Nodes, "nodes", clip(f.Failing), "reason", f.Reason}
		})
	}
	for _, f := range r.Images {
		s := subject{image: f.Image}
		seen[s] = true
		a.compare(ctx, s, verdict{f.Scope, strings.Join(f.Zones, ",")}, func() []any {
			return []any{"image", f.Image, "registry", f.Registry, "status", f.Worst.Word(),
				"failing_nodes", len(f.Failing), "nodes", clip(f.Failing), "reason", f.Reason}
		})
	}
	// Subjects no live node reports any more end their failure too.
	for s, v := range a.last {
		if seen[s] {
			continue
		}
		delete(a.last, s)
		if v.scope == diagnose.ScopeNone {
			continue
		}
		var args []any
		if s.image != "" {
			args = []any{"image", s.image}
		} else {
			args = []any{"registry", s.endpoint.Registry, "endpoint", s.endpoint.URL, "role", s.endpoint.Role}
		}
		a.logChange(ctx, slog.LevelInfo, append([]any{"from", scopeWord(v.scope), "to", "none", "why", "no live node reports it"}, args...))
	}
}

func (a *Analyzer) compare(ctx context.Context, s subject, now verdict, details func() []any) {
	before, known := a.last[s]
	a.last[s] = now
	if before == now || (!known && now.scope == diagnose.ScopeNone) {
		return
	}
	args := []any{"from", scopeWord(before.scope), "to", scopeWord(now.scope)}
	if now.zones != "" {
		args = append(args, "zones", now.zones)
	}
	level := slog.LevelInfo
	if now.scope != diagnose.ScopeNone {
		level = slog.LevelWarn
	}
	a.logChange(ctx, level, append(args, details()...))
}

// logChange writes one "diagnosis changed" line within the log budget,
// preceded by how many were suppressed since the last one written; over
// the budget it only counts the line.
func (a *Analyzer) logChange(ctx context.Context, level slog.Level, args []any) {
	if !a.changeLog.Allow() {
		a.suppressed++
		return
	}
	a.writeSuppressed(ctx)
	a.log.Log(ctx, level, "diagnosis changed", args...)
}

// flushSuppressed writes the count of suppressed lines once the budget
// allows, so that a burst's count is not held back until the next change.
func (a *Analyzer) flushSuppressed(ctx context.Context) {
	if a.suppressed > 0 && a.changeLog.Allow() {
		a.writeSuppressed(ctx)
	}
}

// writeSuppressed writes how many lines were suppressed, if any, and
// starts counting again.
func (a *Analyzer) writeSuppressed(ctx context.Context) {
	if a.suppressed > 0 {
		a.log.WarnContext(ctx, "diagnosis changes not logged (over the log budget); see pullwatch_image_failure and pullwatch_registry_failure",
			"suppressed", a.suppressed)
		a.suppressed = 0
	}
}

func scopeWord(s diagnose.Scope) string {
	if s == diagnose.ScopeNone {
		return "none"
	}
	return string(s)
}

func clip(names []string) string {
	if len(names) > maxLoggedNodes {
		return strings.Join(names[:maxLoggedNodes], ",") + ",..."
	}
	return strings.Join(names, ",")
}
