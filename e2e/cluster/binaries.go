package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Binary names in Options.Bin.
const (
	AgentBinary      = "pullwatch-agent"
	AggregatorBinary = "pullwatch-aggregator"
)

// BinEnv names a directory holding both binaries (make integration sets
// it to bin/); the tests and pwlab use it instead of building.
const BinEnv = "PULLWATCH_BIN"

// RepoRoot finds the pullwatch checkout: from this file's source path
// when built from the tree, else upwards from the working directory to
// the directory with go.work.
func RepoRoot() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
		if fileExists(filepath.Join(root, "go.work")) {
			return root, nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if fileExists(filepath.Join(dir, "go.work")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cluster: cannot find the pullwatch checkout (no go.work above the working directory)")
		}
		dir = parent
	}
}

// FindBinaries returns a directory with pullwatch-agent and
// pullwatch-aggregator: bin when given (it must have both), else $BinEnv
// when it has both, else a fresh `go build` of both into buildDir.
func FindBinaries(ctx context.Context, bin, buildDir string) (string, error) {
	has := func(d string) bool {
		return fileExists(filepath.Join(d, AgentBinary)) && fileExists(filepath.Join(d, AggregatorBinary))
	}
	if bin != "" {
		if !has(bin) {
			return "", fmt.Errorf("cluster: %s lacks %s or %s (run make build)", bin, AgentBinary, AggregatorBinary)
		}
		return filepath.Abs(bin)
	}
	if d := os.Getenv(BinEnv); d != "" && has(d) {
		return filepath.Abs(d)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	for _, b := range []struct{ module, out string }{
		{"agent", AgentBinary},
		{"aggregator", AggregatorBinary},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(buildDir, b.out), "./cmd/"+b.out)
		cmd.Dir = filepath.Join(root, b.module)
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("cluster: build %s in %s: %w\n%s", b.out, cmd.Dir, err, out)
		}
	}
	return buildDir, nil
}

// agentFlags returns the long flags `pullwatch-agent run --help` lists.
func agentFlags(ctx context.Context, agent string) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, agent, "run", "--help").CombinedOutput() // --help may exit 0 or 2
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+--([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if !flags["aggregator"] {
		return nil, fmt.Errorf("cluster: %s run --help lists no --aggregator flag:\n%s", agent, out)
	}
	return flags, nil
}

// RuleFiles returns the shipped Prometheus rule files
// (deploy/rules/*.rules.yaml) of the checkout, or of dir when given.
func RuleFiles(dir string) ([]string, error) {
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return nil, err
		}
		dir = filepath.Join(root, "deploy", "rules")
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.rules.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	return files, nil
}

var forRE = regexp.MustCompile(`(?m)^(\s+for:\s*)([0-9a-z]+)(\s*(?:#.*)?)$`)

// RewriteFor copies each rule file into dir with every `for:` duration
// replaced by forDur ("" keeps them). It returns the copies and, per
// alert name, the shipped duration.
func RewriteFor(files []string, dir, forDur string) ([]string, map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	shipped := map[string]string{}
	alertRE := regexp.MustCompile(`^\s*-\s*alert:\s*(\S+)`)
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, fmt.Errorf("rules: %w", err)
		}
		alert := ""
		for _, line := range strings.Split(string(b), "\n") {
			if m := alertRE.FindStringSubmatch(line); m != nil {
				alert = strings.Trim(m[1], `"'`)
			}
			if m := forRE.FindStringSubmatch(line); m != nil && alert != "" {
				shipped[alert] = m[2]
			}
		}
		text := string(b)
		if forDur != "" {
			text = "# copied from " + f + " with every for: set to " + forDur + " (tests only)\n" +
				forRE.ReplaceAllString(text, "${1}"+forDur+"${3}")
		}
		dst := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(dst, []byte(text), 0o644); err != nil {
			return nil, nil, err
		}
		out = append(out, dst)
	}
	return out, shipped, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
