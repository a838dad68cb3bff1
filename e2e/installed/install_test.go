package installed

import (
	"context"
	"os"
	"path/filepath"
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
	agent, aggregator, err := c.PushImages(ctx, builtImage("pullwatch-agent"), builtImage("pullwatch-aggregator"), installedTag)
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
	prom, err = c.StartPrometheus(ctx, filepath.Join(root, "deploy", "rules", "pullwatch.rules.yaml"))
	return err
}
