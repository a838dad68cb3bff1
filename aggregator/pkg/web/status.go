package web

import (
	"bytes"
	"cmp"
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
	"github.com/pullwatch/pullwatch/aggregator/pkg/risk"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// Analyzer is what the status page reads: analyzer.Analyzer.
type Analyzer interface {
	Analyze(ctx context.Context) *diagnose.Report
}

// Agents counts open agent streams: state.Store.
type Agents interface {
	ConnectedAgents() int
}

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Parse(statusHTML))

// StatusPage serves the human view of the aggregator at /: a node ×
// endpoint grid, failing images with their scope and reason, and agent
// freshness. Everything is server-rendered by html/template, which
// escapes what agents send (image names, reasons); the page loads nothing
// else and runs no script.
type StatusPage struct {
	// Risk, when set, returns the latest risk assessment
	// (analyzer.Analyzer.Risk), read after each analysis.
	Risk func() *risk.Assessment

	analyzer Analyzer
	agents   Agents
	log      *slog.Logger
	now      func() time.Time
}

// NewStatusPage returns the page over analyzer and agents.
func NewStatusPage(analyzer Analyzer, agents Agents, log *slog.Logger) *StatusPage {
	return &StatusPage{analyzer: analyzer, agents: agents, log: log, now: time.Now}
}

// ServeHTTP renders the page.
func (p *StatusPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	data := p.build(p.analyzer.Analyze(r.Context()))
	var buf bytes.Buffer
	if err := statusTemplate.Execute(&buf, data); err != nil {
		p.log.ErrorContext(r.Context(), "status page", logging.ErrKey, err)
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	// No script, no external anything; the inline stylesheet is the
	// only resource.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

// The page's view model.
type pageData struct {
	Generated                        string
	Live, Fresh, Stale, Unregistered int
	Connected                        int
	Columns                          []column
	Rows                             []row
	Images                           []imageRow
	EndpointFailures                 []endpointRow
	HealthyNodes                     int
	// The risk section, when the assessment is known (Kubernetes API).
	RiskKnown      bool
	AtRisk         []riskRow
	SafeCached     int
	RiskyWorkloads []workloadRow
}

type riskRow struct {
	Node, Namespace, Pod, Container, Workload string
	Image, Status, Reason, PullPolicy, Since  string
}

type workloadRow struct {
	Namespace, Kind, Name, Container, Image string
	Count, Of                               int
	Nodes                                   string
}

type column struct {
	Registry, URL, Role string
	Scope               string // "" when healthy
}

type row struct {
	Node, Zone  string
	State       string // fresh, stale, unregistered
	Age         string
	Agent       string
	Cells       []cell
	Images      int
	Failing     int
	FailingText string
}

type cell struct {
	Class  string // up, down, unused
	Text   string // the words shown: "up", "DOWN", "not used"
	Detail string // latency or reason, shortened
	Title  string // the full reason
}

type imageRow struct {
	Image, Registry string
	Scope           string
	Status          string
	Failing         int
	Of              int
	Nodes           string
	Zones           string
	Reason          string
	InUse           bool
	// Since is when the earliest failing node first saw its status
	// (from the agents' status_since), "" when none says.
	Since string
}

type endpointRow struct {
	Registry, URL, Role string
	Scope               string
	Failing, Of         int
	Nodes               string
	Zones               string
	Reason              string
}

// maxNodeNames bounds the node names listed in one table cell.
const maxNodeNames = 8

func (p *StatusPage) build(r *diagnose.Report) pageData {
	now := p.now()
	d := pageData{Generated: now.UTC().Format("2006-01-02 15:04:05 MST"), Live: r.Live, Connected: p.agents.ConnectedAgents()}

	keys := d.addEndpoints(r)

	// Rows: one per node, the ones with something wrong first.
	for i := range r.Nodes {
		n := &r.Nodes[i]
		switch n.State() {
		case diagnose.NodeUnregistered:
			d.Unregistered++
		case diagnose.NodeStale:
			d.Stale++
		default:
			d.Fresh++
		}
		d.Rows = append(d.Rows, nodeRow(n, r.NodeEndpoints[i], keys, now))
	}
	slices.SortStableFunc(d.Rows, func(a, b row) int { return cmp.Compare(rowRank(b), rowRank(a)) })
	for _, rw := range d.Rows {
		if rowRank(rw) == 0 {
			d.HealthyNodes++
		}
	}

	since := failingSince(r)
	for _, f := range r.Images {
		if f.Scope == diagnose.ScopeNone {
			continue
		}
		row := imageRow{
			Image: f.Image, Registry: f.Registry, Scope: string(f.Scope), Status: f.Worst.Word(),
			Failing: len(f.Failing), Of: total(f.Counts[:]), Nodes: listNames(f.Failing), Zones: strings.Join(f.Zones, ", "),
			Reason: f.Reason, InUse: f.InUse,
		}
		if t, ok := since[f.Image]; ok {
			row.Since = t.UTC().Format("2006-01-02 15:04:05") + " (" + age(now.Sub(t)) + ")"
		}
		d.Images = append(d.Images, row)
	}
	slices.SortStableFunc(d.Images, func(a, b imageRow) int {
		return cmp.Or(cmp.Compare(scopeRank(b.Scope), scopeRank(a.Scope)), boolRank(b.InUse)-boolRank(a.InUse))
	})
	if p.Risk != nil {
		d.addRisk(p.Risk(), now)
	}
	return d
}

// failingSince is, per image, the earliest status_since among the live
// nodes where the image is not available.
func failingSince(r *diagnose.Report) map[string]time.Time {
	out := map[string]time.Time{}
	for i := range r.Nodes {
		n := &r.Nodes[i]
		if !n.Live() {
			continue
		}
		for _, im := range n.Images {
			if im.GetStatus() == pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE || im.GetStatusSince() == nil {
				continue
			}
			t := im.GetStatusSince().AsTime()
			if prev, ok := out[im.GetImage()]; !ok || t.Before(prev) {
				out[im.GetImage()] = t
			}
		}
	}
	return out
}

// addRisk fills the risk section from a; nil leaves it out.
func (d *pageData) addRisk(a *risk.Assessment, now time.Time) {
	if a == nil {
		return
	}
	d.RiskKnown = true
	d.SafeCached = len(a.Safe)
	for _, c := range a.AtRisk {
		since := "unknown"
		if !c.Since.IsZero() {
			since = c.Since.UTC().Format("2006-01-02 15:04:05") + " (" + age(now.Sub(c.Since)) + ")"
		}
		d.AtRisk = append(d.AtRisk, riskRow{Node: c.Node, Namespace: c.Namespace, Pod: c.Pod, Container: c.Container,
			Workload: c.Kind + " " + c.Workload, Image: c.Image, Status: c.Status.Word(), Reason: string(c.Reason),
			PullPolicy: string(c.PullPolicy), Since: since})
	}
	for _, w := range a.Workloads {
		if len(w.Nodes) == 0 {
			continue
		}
		d.RiskyWorkloads = append(d.RiskyWorkloads, workloadRow{Namespace: w.Namespace, Kind: w.Kind, Name: w.Name,
			Container: w.Container, Image: w.Image, Count: len(w.Nodes), Of: a.Live, Nodes: listNames(w.Nodes)})
	}
}

// addEndpoints fills the failing endpoints table and the grid's columns:
// every endpoint any node tried, with its scope when failing. It returns
// the columns' keys in order.
func (d *pageData) addEndpoints(r *diagnose.Report) []diagnose.EndpointKey {
	scopes := map[diagnose.EndpointKey]diagnose.Scope{}
	for _, f := range r.Endpoints {
		scopes[f.EndpointKey] = f.Scope
		if f.Scope != diagnose.ScopeNone {
			d.EndpointFailures = append(d.EndpointFailures, endpointRow{
				Registry: f.Registry, URL: f.URL, Role: f.Role, Scope: string(f.Scope),
				Failing: len(f.Failing), Of: f.Nodes, Nodes: listNames(f.Failing), Zones: strings.Join(f.Zones, ", "), Reason: f.Reason,
			})
		}
	}
	var keys []diagnose.EndpointKey
	seen := map[diagnose.EndpointKey]bool{}
	for _, eps := range r.NodeEndpoints {
		for _, ep := range eps {
			if !seen[ep.EndpointKey] {
				seen[ep.EndpointKey] = true
				keys = append(keys, ep.EndpointKey)
			}
		}
	}
	slices.SortFunc(keys, func(a, b diagnose.EndpointKey) int {
		return cmp.Or(strings.Compare(a.Registry, b.Registry), strings.Compare(b.Role, a.Role), strings.Compare(a.URL, b.URL))
	})
	for _, k := range keys {
		d.Columns = append(d.Columns, column{Registry: k.Registry, URL: k.URL, Role: k.Role, Scope: string(scopes[k])})
	}
	return keys
}

// nodeRow is a node's row of the grid: one cell per column key.
func nodeRow(n *diagnose.Node, eps []diagnose.NodeEndpoint, keys []diagnose.EndpointKey, now time.Time) row {
	rw := row{Node: n.Name, Zone: n.Zone, Age: age(now.Sub(n.LastReport)), State: string(n.State()), Images: len(n.Images)}
	if info := n.Info; info != nil {
		var parts []string
		if v := info.GetAgentVersion(); v != "" {
			parts = append(parts, "agent "+v)
		}
		if rt := strings.TrimSpace(info.GetRuntime().GetName() + " " + info.GetRuntime().GetVersion()); rt != "" {
			parts = append(parts, rt)
		}
		rw.Agent = strings.Join(parts, " · ")
	}
	byKey := map[diagnose.EndpointKey]diagnose.NodeEndpoint{}
	for _, ep := range eps {
		byKey[ep.EndpointKey] = ep
	}
	for _, k := range keys {
		ep, ok := byKey[k]
		switch {
		case !ok:
			rw.Cells = append(rw.Cells, cell{Class: "unused", Text: "not used"})
		case ep.Up:
			c := cell{Class: "up", Text: "up"}
			if ep.HasLatency {
				c.Detail = latency(ep.MaxLatency)
			}
			rw.Cells = append(rw.Cells, c)
		default:
			rw.Cells = append(rw.Cells, cell{Class: "down", Text: "DOWN", Detail: shorten(ep.Reason, 48), Title: ep.Reason})
		}
	}
	var worst []string
	for _, im := range n.Images {
		if im.GetStatus() != pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE {
			rw.Failing++
			worst = append(worst, im.GetStatus().Word())
		}
	}
	if rw.Failing > 0 {
		slices.Sort(worst)
		rw.FailingText = summarizeWords(worst)
	}
	return rw
}

// rowRank puts nodes with a down endpoint first, then failing images,
// then stale or unregistered nodes; 0 is a healthy node.
func rowRank(r row) int {
	rank := 0
	for _, c := range r.Cells {
		if c.Class == "down" {
			rank += 4
			break
		}
	}
	if r.Failing > 0 {
		rank += 2
	}
	if r.State != string(diagnose.NodeFresh) {
		rank++
	}
	return rank
}

// scopeRank orders the failing images table: widest impact first.
func scopeRank(s string) int {
	switch diagnose.Scope(s) {
	case diagnose.ScopeCluster:
		return 5
	case diagnose.ScopeZone:
		return 4
	case diagnose.ScopeImage:
		return 3
	case diagnose.ScopeMirror:
		return 2
	case diagnose.ScopeNode:
		return 1
	}
	return 0
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

func total(counts []int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

// summarizeWords turns sorted words into "2 absent, 1 unreachable".
func summarizeWords(words []string) string {
	var parts []string
	for i := 0; i < len(words); {
		j := i
		for j < len(words) && words[j] == words[i] {
			j++
		}
		parts = append(parts, fmt.Sprintf("%d %s", j-i, words[i]))
		i = j
	}
	return strings.Join(parts, ", ")
}

func listNames(names []string) string {
	if len(names) > maxNodeNames {
		return strings.Join(names[:maxNodeNames], ", ") + fmt.Sprintf(" and %d more", len(names)-maxNodeNames)
	}
	return strings.Join(names, ", ")
}

// shorten cuts s to at most n runes, marking the cut.
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func age(d time.Duration) string {
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds ago", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func latency(seconds float64) string {
	if seconds < 1 {
		return fmt.Sprintf("%.0f ms", seconds*1000)
	}
	return fmt.Sprintf("%.1f s", seconds)
}
