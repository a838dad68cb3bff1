// Package aggregator_test checks what ships next to the aggregator and
// reads its metrics: the alerting rules (deploy/prometheus-rules.yaml and
// deploy/rules/), their promtool unit tests, the alert documentation and
// the Grafana dashboards (deploy/grafana/); and what the agent DaemonSet
// (deploy/daemonset.yaml) lets the agent see of the node.
//
// promtool (Debian's prometheus package) checks and unit-tests the rules;
// without it those tests skip, unless PULLWATCH_REQUIRE_REAL=1.
package aggregator_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Paths from the repository root.
const (
	prometheusRuleFile = "deploy/prometheus-rules.yaml"
	rulesFile          = "deploy/rules/pullwatch.rules.yaml"
	rulesTestFile      = "deploy/rules/pullwatch.rules.test.yaml"
	alertsDoc          = "docs/alerts.md"
	grafanaDir         = "deploy/grafana"
	runbookPrefix      = "https://github.com/pullwatch/pullwatch/blob/main/docs/alerts.md#"
)

func readRoot(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rulesDoc struct {
	Groups []ruleGroup `json:"groups"`
}

type prometheusRule struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec rulesDoc `json:"spec"`
}

func loadRules(t *testing.T) rulesDoc {
	t.Helper()
	var doc rulesDoc
	if err := yaml.UnmarshalStrict(readRoot(t, rulesFile), &doc); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return doc
}

func alerts(doc rulesDoc) []rule {
	var out []rule
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out = append(out, r)
			}
		}
	}
	return out
}

// TestPrometheusRuleMatchesRulesFile: the PrometheusRule's spec and the
// plain rules file hold the same groups. That the file is a
// monitoring.coreos.com/v1 PrometheusRule in the pullwatch namespace is
// checked with the other manifests (e2e/deploy, TestManifestsDecodeStrictly).
func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	var pr prometheusRule
	if err := yaml.UnmarshalStrict(readRoot(t, prometheusRuleFile), &pr); err != nil {
		t.Fatalf("%s: %v", prometheusRuleFile, err)
	}
	plain := loadRules(t)
	if reflect.DeepEqual(pr.Spec, plain) {
		return
	}
	// Say where they differ.
	if len(pr.Spec.Groups) != len(plain.Groups) {
		t.Fatalf("%s has %d groups, %s %d", prometheusRuleFile, len(pr.Spec.Groups), rulesFile, len(plain.Groups))
	}
	for i := range plain.Groups {
		a, b := pr.Spec.Groups[i], plain.Groups[i]
		if a.Name != b.Name || a.Interval != b.Interval || len(a.Rules) != len(b.Rules) {
			t.Errorf("group %d: %s has %s (%d rules), %s has %s (%d rules)", i, prometheusRuleFile, a.Name, len(a.Rules), rulesFile, b.Name, len(b.Rules))
			continue
		}
		for j := range a.Rules {
			if !reflect.DeepEqual(a.Rules[j], b.Rules[j]) {
				t.Errorf("group %s rule %d differs:\n%s: %+v\n%s: %+v", a.Name, j, prometheusRuleFile, a.Rules[j], rulesFile, b.Rules[j])
			}
		}
	}
}

// TestAlertsAreComplete: every alert has for:, a severity, a summary, a
// description and a runbook_url whose anchor docs/alerts.md has.
func TestAlertsAreComplete(t *testing.T) {
	doc := string(readRoot(t, alertsDoc))
	anchors := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## +(\S+)\s*$`).FindAllStringSubmatch(doc, -1) {
		anchors[strings.ToLower(m[1])] = true
	}
	want := []string{
		"PullwatchImageUnavailableOnNode", "PullwatchRegistryUnreachableFromNode", "PullwatchMirrorDown",
		"PullwatchRegistryOutage", "PullwatchImageAbsent", "PullwatchAgentMissing", "PullwatchAggregatorDown",
	}
	var names []string
	for _, r := range alerts(loadRules(t)) {
		names = append(names, r.Alert)
		if d, err := time.ParseDuration(r.For); err != nil || d < time.Minute {
			t.Errorf("%s: for: %q, want at least 1m so that a blip does not fire", r.Alert, r.For)
		}
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s: no %s annotation", r.Alert, a)
			}
		}
		url := r.Annotations["runbook_url"]
		if want := runbookPrefix + strings.ToLower(r.Alert); url != want {
			t.Errorf("%s: runbook_url %q, want %q", r.Alert, url, want)
		}
		if !anchors[strings.ToLower(r.Alert)] {
			t.Errorf("%s: %s has no section \"## %s\"", r.Alert, alertsDoc, r.Alert)
		}
	}
	for _, w := range want {
		if !slices.Contains(names, w) {
			t.Errorf("no alert %s in %s", w, rulesFile)
		}
	}
}

type promtoolTests struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name        string `json:"name"`
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			AlertName string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// TestEveryAlertHasPromtoolTests: each alert has a test case in which it
// fires, and one in which it never fires although the evaluation reaches
// past its for: (a blip, or a condition another alert covers).
func TestEveryAlertHasPromtoolTests(t *testing.T) {
	var tests promtoolTests
	if err := yaml.UnmarshalStrict(readRoot(t, rulesTestFile), &tests); err != nil {
		t.Fatalf("%s: %v", rulesTestFile, err)
	}
	if !slices.Contains(tests.RuleFiles, filepath.Base(rulesFile)) {
		t.Errorf("%s does not load %s", rulesTestFile, filepath.Base(rulesFile))
	}
	fires := map[string]bool{}
	quiet := map[string]bool{}
	forOf := map[string]time.Duration{}
	for _, r := range alerts(loadRules(t)) {
		forOf[r.Alert], _ = time.ParseDuration(r.For)
	}
	for _, tc := range tests.Tests {
		byAlert := map[string][]bool{} // per eval: fired?
		latest := map[string]time.Duration{}
		for _, a := range tc.AlertRuleTest {
			if _, known := forOf[a.AlertName]; !known {
				t.Errorf("test %q: alert %s is not in %s", tc.Name, a.AlertName, rulesFile)
				continue
			}
			byAlert[a.AlertName] = append(byAlert[a.AlertName], len(a.ExpAlerts) > 0)
			d, err := time.ParseDuration(a.EvalTime)
			if err != nil {
				t.Errorf("test %q: eval_time %q: %v", tc.Name, a.EvalTime, err)
			}
			latest[a.AlertName] = max(latest[a.AlertName], d)
		}
		for name, evals := range byAlert {
			if slices.Contains(evals, true) {
				fires[name] = true
			} else if latest[name] > forOf[name] {
				quiet[name] = true
			}
		}
	}
	for name := range forOf {
		if !fires[name] {
			t.Errorf("%s: no promtool test case in which it fires", name)
		}
		if !quiet[name] {
			t.Errorf("%s: no promtool test case in which it must not fire (evaluated past its for: %s)", name, forOf[name])
		}
	}
}

// promtool returns the promtool binary, or skips.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("PULLWATCH_REQUIRE_REAL") == "1" {
			t.Fatal("promtool is required (PULLWATCH_REQUIRE_REAL=1) but not installed: apt-get install prometheus")
		}
		t.Skip("promtool not installed (apt-get install prometheus); rules not checked")
	}
	return p
}

func runPromtool(t *testing.T, bin, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestPromtoolRules(t *testing.T) {
	bin := promtool(t)
	dir := filepath.Join("..", filepath.Dir(rulesFile))
	runPromtool(t, bin, dir, "check", "rules", filepath.Base(rulesFile))
	runPromtool(t, bin, dir, "test", "rules", filepath.Base(rulesTestFile))
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Title      string `json:"title"`
	Type       string `json:"type"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

func loadDashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("..", grafanaDir, "*.json"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no dashboards in %s (%v)", grafanaDir, err)
	}
	out := map[string]dashboard{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		// Grafana's schema has many fields the test does not model.
		var d dashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		out[filepath.Base(p)] = d
	}
	return out
}

func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// dashboardVars are the variables each dashboard must have, and the
// selector every panel of it must use.
var dashboardVars = map[string]struct {
	vars     []string
	selector string
}{
	"pullwatch-node.json":    {[]string{"datasource", "node"}, `node="$node"`},
	"pullwatch-cluster.json": {[]string{"datasource", "cluster", "zone", "registry"}, `cluster=~"$cluster"`},
}

// TestDashboards: every panel but rows queries the ${datasource} variable;
// the node dashboard has a node variable and its panels filter on it; the
// cluster overview has cluster, zone and registry variables and its panels
// filter on the cluster.
func TestDashboards(t *testing.T) {
	dashboards := loadDashboards(t)
	for file := range dashboardVars {
		if _, ok := dashboards[file]; !ok {
			t.Errorf("no %s in %s", file, grafanaDir)
		}
	}
	for file, d := range dashboards {
		want, known := dashboardVars[file]
		if !known {
			t.Errorf("%s: a dashboard this test does not know: add it to dashboardVars", file)
			continue
		}
		vars := map[string]bool{}
		for _, v := range d.Templating.List {
			vars[v.Name] = true
		}
		for _, v := range want.vars {
			if !vars[v] {
				t.Errorf("%s: variables %v, want %v", file, vars, want.vars)
			}
		}
		n := 0
		for _, p := range allPanels(d.Panels) {
			if p.Type == "row" {
				continue
			}
			n++
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("%s: panel %q does not use the ${datasource} variable", file, p.Title)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", file, p.Title)
			}
			for _, tg := range p.Targets {
				if !strings.Contains(tg.Expr, want.selector) {
					t.Errorf("%s: panel %q: %s does not select %s", file, p.Title, tg.Expr, want.selector)
				}
			}
		}
		if n == 0 {
			t.Errorf("%s: no panels", file)
		}
	}
}

// dashboardVariables fills a panel's variables as a test queries them.
var dashboardVariables = strings.NewReplacer("$node", "node-1", "$cluster", ".*", "$zone", ".*", "$registry", ".*")

// TestDashboardQueriesParse: every panel's PromQL, with $node filled in,
// is valid (promtool checks it as a recording rule). The e2e test
// TestAggregatorDashboardQueries (e2e/deploy) runs them against a real
// Prometheus.
func TestDashboardQueriesParse(t *testing.T) {
	bin := promtool(t)
	var doc rulesDoc
	doc.Groups = []ruleGroup{{Name: "dashboard-queries"}}
	for file, d := range loadDashboards(t) {
		for _, p := range allPanels(d.Panels) {
			for i, tg := range p.Targets {
				if tg.Expr == "" {
					continue
				}
				doc.Groups[0].Rules = append(doc.Groups[0].Rules, rule{
					Record: fmt.Sprintf("dashboard:%s:%d", regexp.MustCompile(`[^a-zA-Z0-9_]`).ReplaceAllString(strings.TrimSuffix(file, ".json")+"_"+p.Title, "_"), i),
					Expr:   dashboardVariables.Replace(tg.Expr),
				})
			}
		}
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "queries.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, bin, dir, "check", "rules", "queries.yaml")
}

// nodePathsDoc holds the table of the node paths the agent reads by
// default, "What the agent reads from the node"; an agent test checks that
// it lists every one of them.
const nodePathsDoc = "docs/node-path.md"

// agentNodePaths returns the node paths in nodePathsDoc's table, each
// with whether the DaemonSet must mount it.
func agentNodePaths(t *testing.T) map[string]bool {
	t.Helper()
	doc := string(readRoot(t, nodePathsDoc))
	_, section, ok := strings.Cut(doc, "### What the agent reads from the node\n")
	if !ok {
		t.Fatalf("%s has no section \"What the agent reads from the node\"", nodePathsDoc)
	}
	paths := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "#") {
			break
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if !strings.HasPrefix(line, "| `") || len(cells) != 3 {
			continue
		}
		mounted := !strings.HasPrefix(cells[2], "not mounted")
		for _, m := range regexp.MustCompile("`(/[^`]*)`").FindAllStringSubmatch(cells[0], -1) {
			paths[m[1]] = mounted
		}
	}
	if len(paths) < 10 {
		t.Fatalf("%s: only %d node paths in its table", nodePathsDoc, len(paths))
	}
	return paths
}

const (
	daemonSetFile = "deploy/daemonset.yaml"
	agentHostRoot = "/host"
	// agentStateDir holds the agent's --state-file, the one node path it writes.
	agentStateDir = "/var/lib/pullwatch"
)

// agentDaemonSet returns the agent's DaemonSet and its container.
func agentDaemonSet(t *testing.T) (*appsv1.DaemonSet, *corev1.Container) {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(readRoot(t, daemonSetFile)), 4096)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", daemonSetFile, err)
		}
		var meta struct{ Kind string }
		if err := json.Unmarshal(raw, &meta); err != nil || meta.Kind != "DaemonSet" {
			continue
		}
		var ds appsv1.DaemonSet
		if err := yaml.UnmarshalStrict(raw, &ds); err != nil {
			t.Fatalf("%s: DaemonSet: %v", daemonSetFile, err)
		}
		cs := ds.Spec.Template.Spec.Containers
		if len(cs) != 1 {
			t.Fatalf("%s: %d containers, want the agent's only", daemonSetFile, len(cs))
		}
		return &ds, &cs[0]
	}
	t.Fatalf("no DaemonSet in %s", daemonSetFile)
	return nil, nil
}

// under reports whether p is dir or inside it.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// criSocketDirs are the runtimes' socket directories the DaemonSet mounts
// at their own paths (PULLWATCH_CRI_ENDPOINT lists a socket in each).
var criSocketDirs = []string{"/run/containerd", "/var/run/crio", "/run/k3s/containerd"}

// TestDeployAgentHostPaths: the DaemonSet mounts, read-only, under the
// agent's --host-root, each node path the agent reads by default (unless
// docs/node-path.md says it is not mounted, and why), and nothing as wide
// as the node's / or /etc.
func TestDeployAgentHostPaths(t *testing.T) {
	ds, c := agentDaemonSet(t)
	spec := ds.Spec.Template.Spec
	var root string
	for _, e := range c.Env {
		if e.Name == "PULLWATCH_HOST_ROOT" {
			root = e.Value
		}
	}
	if root != agentHostRoot {
		t.Fatalf("PULLWATCH_HOST_ROOT = %q, want %s", root, agentHostRoot)
	}
	hostPaths := map[string]string{} // volume → node path
	for _, v := range spec.Volumes {
		if v.HostPath == nil {
			continue
		}
		p := filepath.Clean(v.HostPath.Path)
		hostPaths[v.Name] = p
		for _, wide := range []string{"/", "/etc", "/var", "/var/lib/kubelet", "/root", "/run", "/usr", "/lib"} {
			if p == wide {
				t.Errorf("volume %s mounts the node's whole %s", v.Name, p)
			}
		}
		if v.HostPath.Type == nil || *v.HostPath.Type == "" {
			t.Errorf("volume %s (%s) has no hostPath type: the runtime would create a missing path as a directory", v.Name, p)
		}
	}
	// node path → mounted read-only at /host + node path.
	covered := map[string]bool{}
	for _, m := range c.VolumeMounts {
		p, ok := hostPaths[m.Name]
		if !ok {
			continue
		}
		if p == agentStateDir {
			// The agent's own state directory (--state-file): writable,
			// where it is on the node, and nothing else.
			if m.MountPath != p || m.ReadOnly {
				t.Errorf("state volume %s mounted at %s (read-only %v), want writable at %s", m.Name, m.MountPath, m.ReadOnly, p)
			}
			continue
		}
		if !m.ReadOnly {
			t.Errorf("hostPath volume %s (%s) is mounted writable at %s", m.Name, p, m.MountPath)
		}
		if m.SubPath != "" || m.SubPathExpr != "" {
			t.Errorf("hostPath volume %s is mounted with a subPath", m.Name)
		}
		switch {
		case m.MountPath == p && (strings.HasSuffix(p, ".sock") || slices.Contains(criSocketDirs, p)):
			// A CRI socket or its directory, where the agent dials it.
		case m.MountPath == root+p:
			covered[p] = true
		default:
			t.Errorf("hostPath volume %s (%s) is mounted at %s, want %s", m.Name, p, m.MountPath, root+p)
		}
		if under(m.MountPath, root) && (m.MountPath == root || m.MountPath == root+"/etc") {
			t.Errorf("volume %s is the node's whole %s", m.Name, strings.TrimPrefix(m.MountPath, root))
		}
	}
	for p, mounted := range agentNodePaths(t) {
		if !mounted {
			continue
		}
		if !slices.ContainsFunc(slices.Collect(maps.Keys(covered)), func(dir string) bool { return under(p, dir) }) {
			t.Errorf("the agent reads the node's %s under %s, but no read-only hostPath mount covers it", p, root)
		}
	}
}
