package kubecluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
)

// PushImages copies the agent and aggregator images that `make images` built
// (buildah's local storage) into the box's registry and its mirror under
// tag, and returns their names (the registry's host: nodes try the mirror
// first).
func (c *Cluster) PushImages(ctx context.Context, agentSrc, aggregatorSrc, tag string) (agent, aggregator string, err error) {
	refs := map[string]string{}
	for name, src := range map[string]string{"pullwatch-agent": agentSrc, "pullwatch-aggregator": aggregatorSrc} {
		for _, addr := range []string{c.Registry.Addr(), c.Mirror.Addr()} {
			dst := addr + "/pullwatch/" + name + ":" + tag
			out, err := exec.CommandContext(ctx, "buildah", "push", "--quiet", "--tls-verify=false", src, "docker://"+dst).CombinedOutput()
			if err != nil {
				return "", "", fmt.Errorf("buildah push %s to %s (build it with: make images TAG=...): %w: %s", src, addr, err, strings.TrimSpace(string(out)))
			}
		}
		refs[name] = c.Registry.Addr() + "/pullwatch/" + name + ":" + tag
	}
	return refs["pullwatch-agent"], refs["pullwatch-aggregator"], nil
}

// ScrapeTokenFile holds the token StartPrometheus scrapes the aggregator
// with (the aggregator's own, from ScrapeTokenSecret); a person reading the status page can use it too.
func (c *Cluster) ScrapeTokenFile() string { return filepath.Join(c.dir, "prometheus", "scrape-token") }

// StartPrometheus runs Prometheus (3.x, from the kube bin directory) on this machine with the usual
// kubernetes_sd "pod" job and prometheus.io/* relabelling (what the
// aggregator's annotations are for) and the shipped rules.
func (c *Cluster) StartPrometheus(ctx context.Context, rules string) (*prometheus.Prometheus, error) {
	dir := filepath.Join(c.dir, "prometheus")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(c.API.AdminToken()), 0o600); err != nil {
		return nil, err
	}
	// Scrapes carry the token the installed aggregator keeps for its
	// audience (pullwatch-metrics) in deploy/'s Secret, as the
	// ServiceMonitor's authorization does.
	if err := c.syncScrapeToken(ctx); err != nil {
		return nil, err
	}
	scrapeTokenFile := c.ScrapeTokenFile()
	// The aggregator serves /metrics over TLS (PULLWATCH_HTTP_TLS): verify
	// it with the installed CA for the Service's name, as the
	// ServiceMonitor does.
	caFile, err := c.AggregatorCA(ctx)
	if err != nil {
		return nil, err
	}
	sc := fmt.Sprintf(`  - job_name: kubernetes-pods
    # The risk and compatibility families carry namespace, pod and
    # container labels of their own (as the ServiceMonitor, docs/install.md).
    honor_labels: true
    authorization: {credentials_file: %q}
    scheme: https
    tls_config: {ca_file: %q, server_name: %q}
    kubernetes_sd_configs:
      - role: pod
        api_server: %q
        tls_config: {ca_file: %q}
        authorization: {credentials_file: %q}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: "true"
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        target_label: __metrics_path__
        regex: (.+)
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scheme]
        target_label: __scheme__
        regex: (https?)
      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
        regex: ([^:]+)(?::\d+)?;(\d+)
        replacement: $1:$2
        target_label: __address__
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
`, scrapeTokenFile, caFile, AggregatorServerName, c.API.URL(), c.API.CAFile(), tokenFile)
	return prometheus.Start(ctx, dir, nil, prometheus.Options{
		// Built from source by scripts/build-kube.sh: Debian's prometheus
		// is built without kubernetes_sd_configs.
		Binary:         filepath.Join(c.bin, "prometheus"),
		ScrapeInterval: 2 * time.Second, EvaluationInterval: 2 * time.Second,
		RuleFiles: []string{rules}, ScrapeConfigs: sc,
	})
}
