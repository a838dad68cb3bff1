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
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
	"github.com/pullwatch/pullwatch/aggregator/pkg/risk"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// Analyzer is what the status page reads: analyzer.Analyzer. Diagnosis
// returns the diagnosis and its generation, which changes exactly when the
// diagnosis was computed anew; the page is built once per generation.
type Analyzer interface {
	Diagnosis(ctx context.Context) (*diagnose.Report, uint64)
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
//
// The page is bounded whatever the cluster's size: its tables are built
// once per diagnosis generation (concurrent requests share the build), the
// grid shows one page of nodes (?page=, ?limit= up to maxLimit) and at
// most maxColumns endpoints, the failing tables at most maxListed rows,
// and ?node= (part of a node name), ?registry= and ?status= (a status
// word) narrow all of them.
type StatusPage struct {
	// Risk, when set, returns the latest risk assessment
	// (analyzer.Analyzer.Risk), read after each analysis.
	Risk func() *risk.Assessment

	analyzer Analyzer
	agents   Agents
	log      *slog.Logger
	now      func() time.Time
	notices  []string

	mu    sync.Mutex
	cache *built
}

// built is the page's tables for one diagnosis generation, before
// filtering and pagination; cells are made per request for the shown rows.
type built struct {
	generation uint64
	risk       *risk.Assessment // the risk assessment it shows (pods change without a new diagnosis)
	// What the rows need of the diagnosis, by node index: not the report
	// itself, which would keep every node's images of that generation in
	// memory until the page is asked for again.
	lastReports   []time.Time
	nodeEndpoints [][]diagnose.NodeEndpoint
	data          pageData
	keys          []diagnose.EndpointKey // the columns' keys, in order
}

// The page's bounds.
const (
	defaultLimit = 100 // nodes per page
	maxLimit     = 500
	maxColumns   = 40  // endpoints in the grid
	maxListed    = 200 // rows of each failing table
)

// NewStatusPage returns the page over analyzer and agents.
func NewStatusPage(analyzer Analyzer, agents Agents, log *slog.Logger) *StatusPage {
	return &StatusPage{analyzer: analyzer, agents: agents, log: log, now: time.Now}
}

// ServeHTTP renders the page.
func (p *StatusPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q, err := parseQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rep, gen := p.analyzer.Diagnosis(r.Context())
	data := p.view(p.tables(rep, gen), rep, q)
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

// tables returns the tables of generation gen, building them if needed.
func (p *StatusPage) tables(rep *diagnose.Report, gen uint64) *built {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ra *risk.Assessment
	if p.Risk != nil {
		ra = p.Risk()
	}
	if p.cache == nil || p.cache.generation != gen || p.cache.risk != ra {
		b := &built{generation: gen, risk: ra, nodeEndpoints: rep.NodeEndpoints, lastReports: make([]time.Time, len(rep.Nodes))}
		for i := range rep.Nodes {
			b.lastReports[i] = rep.Nodes[i].LastReport
		}
		b.data, b.keys = p.build(rep)
		p.cache = b
	}
	return p.cache
}

// query is what the request asks to see.
type query struct {
	node, registry, status string
	page, limit            int
}

func parseQuery(v url.Values) (query, error) {
	q := query{node: v.Get("node"), registry: v.Get("registry"), status: v.Get("status"), page: 1, limit: defaultLimit}
	for _, f := range []struct {
		name     string
		dst      *int
		min, max int
	}{{"page", &q.page, 1, 1 << 30}, {"limit", &q.limit, 1, maxLimit}} {
		if s := v.Get(f.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < f.min || n > f.max {
				return q, fmt.Errorf("%s=%q: want a whole number from %d to %d", f.name, s, f.min, f.max)
			}
			*f.dst = n
		}
	}
	if q.status != "" {
		if _, err := pullwatchv1.ParseStatus(q.status); err != nil {
			return q, fmt.Errorf("status: %w", err)
		}
	}
	return q, nil
}

// view filters and paginates the cached tables, and makes the shown rows'
// cells and ages.
func (p *StatusPage) view(b *built, cur *diagnose.Report, q query) pageData {
	d := b.data // a copy: the slices below are replaced, never modified
	d.Generated = p.now().UTC().Format("2006-01-02 15:04:05 MST")
	d.Connected = p.agents.ConnectedAgents()
	d.Filter = filterText(q)

	d.Images = nil
	for _, im := range b.data.Images {
		if (q.registry == "" || im.Registry == q.registry) && (q.status == "" || im.Status == q.status) {
			d.Images = append(d.Images, im)
		}
	}
	d.Images, d.MoreImages = clipList(d.Images)
	d.EndpointFailures = nil
	for _, e := range b.data.EndpointFailures {
		if q.registry == "" || e.Registry == q.registry {
			d.EndpointFailures = append(d.EndpointFailures, e)
		}
	}
	d.EndpointFailures, d.MoreEndpoints = clipList(d.EndpointFailures)
	d.AtRisk = nil
	for _, r := range b.data.AtRisk {
		if q.node == "" || strings.Contains(r.Node, q.node) {
			d.AtRisk = append(d.AtRisk, r)
		}
	}
	d.AtRisk, d.MoreAtRisk = clipList(d.AtRisk)
	d.RiskyWorkloads, d.MoreWorkloads = clipList(b.data.RiskyWorkloads)

	var cols []int
	d.Columns = nil
	for i, c := range b.data.Columns {
		if q.registry == "" || c.Registry == q.registry {
			cols = append(cols, i)
		}
	}
	if len(cols) > maxColumns {
		d.MoreColumns = len(cols) - maxColumns
		cols = cols[:maxColumns]
	}
	for _, i := range cols {
		d.Columns = append(d.Columns, b.data.Columns[i])
	}

	var rows []row
	for _, rw := range b.data.Rows {
		if (q.node == "" || strings.Contains(rw.Node, q.node)) && (q.status == "" || rw.statuses[q.status]) {
			rows = append(rows, rw)
		}
	}
	d.MatchingNodes = len(rows)
	start := min((q.page-1)*q.limit, len(rows))
	end := min(start+q.limit, len(rows))
	if start > 0 {
		d.Prev = pageLink(q, q.page-1)
	}
	if end < len(rows) {
		d.Next = pageLink(q, q.page+1)
	}
	d.FirstRow, d.LastRow = start+1, end
	now := p.now()
	d.Rows = make([]row, 0, end-start)
	for _, rw := range rows[start:end] {
		last := b.lastReports[rw.index]
		if rw.index < len(cur.Nodes) && cur.Nodes[rw.index].Name == rw.Node {
			last = cur.Nodes[rw.index].LastReport
		}
		rw.Age = age(now.Sub(last))
		rw.Cells = nodeCells(b.nodeEndpoints[rw.index], b.keys, cols)
		d.Rows = append(d.Rows, rw)
	}
	return d
}

func clipList[T any](list []T) ([]T, int) {
	if len(list) > maxListed {
		return list[:maxListed], len(list) - maxListed
	}
	return list, 0
}

// pageLink is the URL of another page of the same query.
func pageLink(q query, page int) string {
	v := url.Values{}
	for k, s := range map[string]string{"node": q.node, "registry": q.registry, "status": q.status} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.limit != defaultLimit {
		v.Set("limit", strconv.Itoa(q.limit))
	}
	v.Set("page", strconv.Itoa(page))
	return "/?" + v.Encode()
}

func filterText(q query) string {
	var parts []string
	for _, f := range [][2]string{{"node", q.node}, {"registry", q.registry}, {"status", q.status}} {
		if f[1] != "" {
			parts = append(parts, f[0]+"="+f[1])
		}
	}
	return strings.Join(parts, ", ")
}

// The page's view model.
type pageData struct {
	Notices                          []string
	Generated                        string
	Live, Fresh, Stale, Unregistered int
	Connected                        int
	Columns                          []column
	Rows                             []row
	Images                           []imageRow
	EndpointFailures                 []endpointRow
	HealthyNodes                     int

	// Filtering and pagination.
	Filter                    string // the filters in force, "" for none
	MatchingNodes             int
	FirstRow, LastRow         int
	Prev, Next                string // links to the other pages, "" for none
	MoreImages, MoreEndpoints int    // rows left out of the failing tables
	MoreColumns               int    // endpoints left out of the grid
	// The risk section, when the assessment is known (Kubernetes API).
	RiskKnown      bool
	AtRisk         []riskRow
	SafeCached     int
	RiskyWorkloads []workloadRow
	MoreAtRisk     int // rows left out of AtRisk (filter ?node=, then maxListed)
	MoreWorkloads  int
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

	down     bool            // an endpoint is down from the node
	index    int             // in the report's Nodes
	statuses map[string]bool // the statuses of the node's images
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

// build makes the page's tables from a diagnosis, without cells and ages
// (view makes those for the rows it shows), and returns the columns' keys.
func (p *StatusPage) build(r *diagnose.Report) (pageData, []diagnose.EndpointKey) {
	d := pageData{Live: r.Live}
	now := p.now() // the "since" ages: as of the build (rebuilt on every diagnosis or risk change)
	d.Notices = p.notices

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
		rw := nodeRow(n, r.NodeEndpoints[i])
		rw.index = i
		d.Rows = append(d.Rows, rw)
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
	return d, keys
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

// nodeRow is a node's row of the grid, without its cells and age.
func nodeRow(n *diagnose.Node, eps []diagnose.NodeEndpoint) row {
	rw := row{Node: n.Name, Zone: n.Zone, State: string(n.State()), Images: len(n.Images), statuses: map[string]bool{}}
	for _, ep := range eps {
		if !ep.Up {
			rw.down = true
			break
		}
	}
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
	var worst []string
	for _, im := range n.Images {
		rw.statuses[im.GetStatus().Word()] = true
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

// nodeCells is a node's cells for the columns cols (indexes into keys).
func nodeCells(eps []diagnose.NodeEndpoint, keys []diagnose.EndpointKey, cols []int) []cell {
	byKey := make(map[diagnose.EndpointKey]diagnose.NodeEndpoint, len(eps))
	for _, ep := range eps {
		byKey[ep.EndpointKey] = ep
	}
	cells := make([]cell, 0, len(cols))
	for _, i := range cols {
		ep, ok := byKey[keys[i]]
		switch {
		case !ok:
			cells = append(cells, cell{Class: "unused", Text: "not used"})
		case ep.Up:
			c := cell{Class: "up", Text: "up"}
			if ep.HasLatency {
				c.Detail = latency(ep.MaxLatency)
			}
			cells = append(cells, c)
		default:
			cells = append(cells, cell{Class: "down", Text: "DOWN", Detail: shorten(ep.Reason, 48), Title: ep.Reason})
		}
	}
	return cells
}

// rowRank puts nodes with a down endpoint first, then failing images,
// then stale or unregistered nodes; 0 is a healthy node.
func rowRank(r row) int {
	rank := 0
	if r.down {
		rank += 4
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
