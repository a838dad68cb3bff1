// Package docs_test holds the documentation to what exists: every make
// target, flag of pullwatch-agent and pullwatch-aggregator, and metric name
// that README.md and docs/*.md name. make lint runs it.
package docs_test

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// doc is one documentation file: its text, and the code in it (fenced
// blocks and inline code spans), where commands and flags are named.
type doc struct {
	name  string
	text  string
	spans []string // inline code spans
	lines []string // lines of fenced code blocks
}

var spanRE = regexp.MustCompile("`([^`\n]+)`")

func readDocs(t *testing.T) []doc {
	t.Helper()
	r := repoRoot(t)
	files, _ := filepath.Glob(filepath.Join(r, "docs", "*.md"))
	files = append([]string{filepath.Join(r, "README.md")}, files...)
	var docs []doc
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d := doc{name: strings.TrimPrefix(f, r+"/"), text: string(b)}
		inFence := false
		for line := range strings.Lines(d.text) {
			line = strings.TrimRight(line, "\n")
			if strings.HasPrefix(strings.TrimSpace(line), "```") {
				inFence = !inFence
				continue
			}
			if inFence {
				// A shell comment is prose.
				if i := strings.Index(line, "#"); i >= 0 && (i == 0 || line[i-1] == ' ') {
					line = line[:i]
				}
				d.lines = append(d.lines, line)
				continue
			}
			for _, m := range spanRE.FindAllStringSubmatch(line, -1) {
				d.spans = append(d.spans, m[1])
			}
		}
		docs = append(docs, d)
	}
	return docs
}

// makeTargets are the Makefile's targets.
func makeTargets(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]bool{}
	re := regexp.MustCompile(`^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:([^=]|$)`)
	for line := range strings.Lines(string(b)) {
		if m := re.FindStringSubmatch(strings.TrimRight(line, "\n")); m != nil {
			for _, name := range strings.Fields(m[1]) {
				targets[name] = true
			}
		}
	}
	return targets
}

var makeRE = regexp.MustCompile(`(?:^|[\s;&|(])make((?:\s+[^\s;&|)#]+)+)`)

// TestDocsNameMakeTargets: every `make TARGET` in the docs' code is a
// target of the Makefile.
func TestDocsNameMakeTargets(t *testing.T) {
	targets := makeTargets(t)
	for _, d := range readDocs(t) {
		for _, code := range append(slices.Clone(d.spans), d.lines...) {
			for _, m := range makeRE.FindAllStringSubmatch(code, -1) {
				for _, word := range strings.Fields(m[1]) {
					if strings.Contains(word, "=") || strings.HasPrefix(word, "-") {
						continue // VAR=value, -C dir ...
					}
					if !regexp.MustCompile(`^[a-z][a-z0-9-]*$`).MatchString(word) {
						break
					}
					if !targets[word] {
						t.Errorf("%s names `make %s`, which the Makefile has no target for", d.name, word)
					}
				}
			}
		}
	}
}

// binaryFlags builds both binaries and returns every flag their commands'
// --help lists.
func binaryFlags(t *testing.T) map[string]bool {
	t.Helper()
	r := repoRoot(t)
	dir := t.TempDir()
	flags := map[string]bool{}
	flagLine := regexp.MustCompile(`^  -{1,2}([A-Za-z0-9][A-Za-z0-9_.-]*)`)
	for _, b := range []struct {
		module, name string
		commands     [][]string
	}{
		{"agent", "pullwatch-agent", [][]string{{"run"}, {"check"}}},
		{"aggregator", "pullwatch-aggregator", [][]string{{}, {"remove-node-condition"}}},
	} {
		bin := filepath.Join(dir, b.name)
		build := exec.Command("go", "build", "-o", bin, "./cmd/"+b.name)
		build.Dir = filepath.Join(r, b.module)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.name, err, out)
		}
		for _, args := range b.commands {
			cmd := exec.Command(bin, append(slices.Clone(args), "--help")...)
			cmd.Env = []string{}
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			_ = cmd.Run()
			n := 0
			for line := range strings.Lines(out.String()) {
				if m := flagLine.FindStringSubmatch(line); m != nil {
					flags[m[1]] = true
					n++
				}
			}
			if n == 0 {
				t.Fatalf("%s %v --help lists no flags:\n%s", b.name, args, out.String())
			}
		}
	}
	return flags
}

// otherTools are flags the docs name of other programs (kubectl, helm,
// buildah, docker, crictl, the kubelet, ...) in a code span of their own,
// with the program they belong to. Extend it deliberately.
var otherTools = map[string]string{
	"create-namespace": "helm install", "reuse-values": "helm upgrade", "set": "helm",
	"values": "helm", "namespace": "helm/kubectl", "strict": "helm lint",
	"all": "buildah manifest push", "tls-verify": "buildah push", "pull": "buildah bud",
	"platform": "docker buildx / buildah", "push": "docker buildx", "creds": "crictl pull",
	"config": "crictl / containerd", "timeout": "crictl stop", "runtime-endpoint": "crictl", "image-endpoint": "crictl",
	"hostname-override": "kubelet", "node-ip": "kubelet", "root-dir": "kubelet",
	"image-credential-provider-config": "kubelet (and the agent)", "image-credential-provider-bin-dir": "kubelet (and the agent)",
	"mount": "unshare", "propagation": "unshare", "headless": "chromium", "no-sandbox": "chromium",
	"cluster.listen-address": "alertmanager", "rules.alert.resend-delay": "prometheus",
	"disable-admission-plugins": "kube-apiserver", "endpoint-reconciler-type": "kube-apiserver",
	"service-account-key-file": "kube-apiserver", "service-account-signing-key-file": "kube-apiserver",
	"service-account-issuer": "kube-apiserver", "token-auth-file": "kube-apiserver",
	"hosts-dir": "ctr", "field-selector": "kubectl", "output": "kubectl", "selector": "kubectl",
	"from-file": "kubectl create configmap", "clusterrole": "kubectl", "serviceaccount": "kubectl",
	"digestfile": "buildah", "layers": "buildah bud", "storage-driver": "buildah", "rm": "buildah commit",
	"race": "go test", "count": "go test", "run": "go test", "bench": "go test", "benchmem": "go test",
	"fuzz": "go test", "fuzztime": "go test", "short": "go test", "tags": "go build", "trimpath": "go build", "ldflags": "go build",
	"diff": "go mod tidy", "variant": "debootstrap", "no-headers": "kubectl", "raw": "skopeo",
	"kubelet-arg": "k3s", "data-dir": "k3s", "write-kubeconfig-mode": "k3s", "disable": "k3s",
	"web.enable-lifecycle": "prometheus", "storage.tsdb.path": "prometheus", "config.file": "prometheus",
	"web.listen-address": "prometheus", "detach": "pwlab", "address": "containerd",
	"heap-profile": "pwload (e2e/cmd/pwload)", "cpu-profile": "pwload (e2e/cmd/pwload)", "own-cpu-profile": "pwload (e2e/cmd/pwload)", "profile-round": "pwload (e2e/cmd/pwload)", "rounds": "pwload (e2e/cmd/pwload)", "path.rootfs": "node_exporter",
	"help": "every command", "version": "every command",
}

var flagRE = regexp.MustCompile(`(?:^|[\s(\[=,])--([a-z0-9][a-z0-9.-]*[a-z0-9])`)

// TestDocsNameFlags: every --flag the docs name on a pullwatch-agent or
// pullwatch-aggregator command line, or alone in a code span, is a flag of
// one of the two binaries (or, alone in a span, a known flag of another
// tool, otherTools).
func TestDocsNameFlags(t *testing.T) {
	flags := binaryFlags(t)
	for _, d := range readDocs(t) {
		check := func(code string, strict bool) {
			for _, m := range flagRE.FindAllStringSubmatch(code, -1) {
				name := m[1]
				if flags[name] {
					continue
				}
				if _, ok := otherTools[name]; ok && !strict {
					continue
				}
				t.Errorf("%s names --%s (in %q), which neither pullwatch-agent nor pullwatch-aggregator has", d.name, name, code)
			}
		}
		for _, span := range d.spans {
			switch {
			case strings.HasPrefix(span, "pullwatch-agent ") || strings.HasPrefix(span, "pullwatch-aggregator ") || strings.HasPrefix(span, "/pullwatch-agent "):
				check(span, false)
			case strings.HasPrefix(span, "--"):
				check(span, false)
			}
		}
		for _, line := range d.lines {
			// The arguments of a pullwatch command: a line (or what
			// follows " -- ", as in kubectl exec) whose command, after
			// any VAR=value, is pullwatch-agent or pullwatch-aggregator.
			// Other programs' flags are theirs.
			parts := []string{line}
			if _, after, ok := strings.Cut(line, " -- "); ok {
				parts = append(parts, after)
			}
			for _, part := range parts {
				words := strings.Fields(part)
				for len(words) > 0 && strings.Contains(words[0], "=") && !strings.HasPrefix(words[0], "-") {
					words = words[1:]
				}
				if len(words) > 0 && slices.Contains([]string{"pullwatch-agent", "pullwatch-aggregator"}, filepath.Base(words[0])) {
					check(strings.Join(words[1:], " "), false)
				}
			}
		}
	}
}

// sourceMetrics are the metric names the binaries' code defines: every
// string literal of the form pullwatch_... in the non-test Go files of
// agent/, aggregator/ and pkg/.
func sourceMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	nameRE := regexp.MustCompile(`^pullwatch_[a-z0-9_]+$`)
	for _, mod := range []string{"agent", "aggregator", "pkg"} {
		err := filepath.WalkDir(filepath.Join(repoRoot(t), mod), func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if s, err := strconv.Unquote(lit.Value); err == nil && nameRE.MatchString(s) {
						names[s] = true
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(names) < 10 {
		t.Fatalf("found only %d metric names in the source: %v", len(names), names)
	}
	return names
}

var metricRE = regexp.MustCompile(`\bpullwatch_[a-z0-9_]*[a-z0-9]`)

// TestDocsNameMetrics: every pullwatch_* metric the docs name is defined
// by the binaries (a histogram's _bucket, _sum and _count series count as
// its name).
func TestDocsNameMetrics(t *testing.T) {
	metrics := sourceMetrics(t)
	for _, d := range readDocs(t) {
		seen := map[string]bool{}
		for _, name := range metricRE.FindAllString(d.text, -1) {
			if seen[name] {
				continue
			}
			seen[name] = true
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suffix); ok && metrics[b] {
					base = b
				}
			}
			if !metrics[base] {
				t.Errorf("%s names the metric %s, which neither binary defines", d.name, name)
			}
		}
	}
}
