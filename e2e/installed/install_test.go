package installed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/kubecluster"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
)

// The images `make images` built (buildah's local storage): REGISTRY and
// TAG as make e2e-installed passes them.
func builtImage(name string) string {
	reg := os.Getenv("PULLWATCH_IMAGES")
	if reg == "" {
		reg = "localhost/pullwatch"
	}
	tag := os.Getenv("PULLWATCH_IMAGE_TAG")
	if tag == "" {
		tag = "e2e"
	}
	return reg + "/" + name + ":" + tag
}

var (
	installOnce sync.Once
	installErr  error
	prom        *prometheus.Prometheus
	// tag is the tag the shipped images have in the box's registry.
	installedTag = "v1"
)

// installed pushes the images `make images` built into the box's registry,
// installs deploy/ through an overlay that only renames the images, and
// starts a real Prometheus that finds the aggregator through the
// Kubernetes API with the shipped rules. Once per test binary.
func installed(t *testing.T) *kubecluster.Cluster {
	t.Helper()
	c := need(t)
	installOnce.Do(func() { installErr = install(c) })
	if installErr != nil {
		t.Fatal(installErr)
	}
	return c
}

func install(c *kubecluster.Cluster) error {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	agent, aggregator, err := pushImages(ctx, c, installedTag)
	if err != nil {
		return err
	}
	root, err := checkout.Root()
	if err != nil {
		return err
	}
	overlay, err := c.Overlay(filepath.Join(root, "deploy"), agent, aggregator)
	if err != nil {
		return err
	}
	if err := c.Install(ctx, overlay, 4*time.Minute); err != nil {
		return err
	}
	prom, err = startPrometheus(ctx, c, filepath.Join(root, "deploy", "rules", "pullwatch.rules.yaml"))
	return err
}

// pushImages copies the built images into the box's registry under tag.
func pushImages(ctx context.Context, c *kubecluster.Cluster, tag string) (agent, aggregator string, err error) {
	refs := map[string]string{}
	for _, name := range []string{"pullwatch-agent", "pullwatch-aggregator"} {
		src := builtImage(name)
		dst := c.Registry.Addr() + "/pullwatch/" + name + ":" + tag
		out, err := exec.CommandContext(ctx, "buildah", "push", "--quiet", "--tls-verify=false", src, "docker://"+dst).CombinedOutput()
		if err != nil {
			return "", "", fmt.Errorf("buildah push %s (build it with: make images TAG=...): %w: %s", src, err, strings.TrimSpace(string(out)))
		}
		refs[name] = dst
	}
	return refs["pullwatch-agent"], refs["pullwatch-aggregator"], nil
}

// startPrometheus runs Prometheus on this machine with the usual
// kubernetes_sd "pod" job and prometheus.io/* relabelling (what the
// aggregator's annotations are for) and the shipped rules.
func startPrometheus(ctx context.Context, c *kubecluster.Cluster, rules string) (*prometheus.Prometheus, error) {
	dir := filepath.Join(c.API.Dir(), "..", "prometheus")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(c.API.AdminToken()), 0o600); err != nil {
		return nil, err
	}
	sc := fmt.Sprintf(`  - job_name: kubernetes-pods
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
      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
        regex: ([^:]+)(?::\d+)?;(\d+)
        replacement: $1:$2
        target_label: __address__
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
`, c.API.URL(), c.API.CAFile(), tokenFile)
	return prometheus.Start(ctx, dir, nil, prometheus.Options{
		ScrapeInterval: 2 * time.Second, EvaluationInterval: 2 * time.Second,
		RuleFiles: []string{rules}, ScrapeConfigs: sc,
	})
}
