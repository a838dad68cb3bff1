package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
)

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
		root, err := checkout.Root()
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
