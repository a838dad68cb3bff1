package kubecluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// The images deploy/ names, which an overlay rewrites for the box.
const (
	ShippedAgentImage      = "ghcr.io/pullwatch/pullwatch-agent"
	ShippedAggregatorImage = "ghcr.io/pullwatch/pullwatch-aggregator"
	Namespace              = "pullwatch"
)

// monitoringCRDs are the two Prometheus-operator kinds deploy/ ships
// objects of (PrometheusRule, ServiceMonitor). No operator runs in the box:
// the API only has to accept them, as in a cluster where
// kube-prometheus-stack is installed. The schemas are open
// (x-kubernetes-preserve-unknown-fields): the operator's own CRDs cannot be
// fetched here.
const monitoringCRDs = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`

// Overlay writes a kustomize overlay of deployDir under the cluster's
// directory that changes nothing but the two image names (and, with a
// credential provider, gives the agent the kubelet's), and returns its
// directory: what a user does with `kustomize edit set image`.
func (c *Cluster) Overlay(deployDir, agentImage, aggregatorImage string) (string, error) {
	abs, err := filepath.Abs(deployDir)
	if err != nil {
		return "", err
	}
	dir := c.OverlayDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	rel, err := filepath.Rel(dir, abs)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\nimages:\n", rel)
	for _, im := range []struct{ from, to string }{{ShippedAgentImage, agentImage}, {ShippedAggregatorImage, aggregatorImage}} {
		name, tag := splitImage(im.to)
		fmt.Fprintf(&b, "  - name: %s\n    newName: %s\n    newTag: %q\n", im.from, name, tag)
	}
	if patch := c.credentialProviderPatch(); patch != "" {
		// The kubelets' credential provider, given to the agent as a user
		// does (docs/credentials.md).
		if err := os.WriteFile(filepath.Join(dir, "credential-provider.yaml"), []byte(patch), 0o644); err != nil {
			return "", err
		}
		b.WriteString("patches:\n  - path: credential-provider.yaml\n")
	}
	return dir, os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(b.String()), 0o644)
}

// splitImage splits "host:port/repo:tag" into name and tag.
func splitImage(ref string) (name, tag string) {
	slash := strings.LastIndex(ref, "/")
	if i := strings.LastIndex(ref, ":"); i > slash {
		return ref[:i], ref[i+1:]
	}
	return ref, "latest"
}

// OverlayDir is the directory Overlay writes.
func (c *Cluster) OverlayDir() string { return filepath.Join(c.dir, "overlay") }

// Install applies the monitoring CRDs, creates the aggregator's TLS Secret
// and CA ConfigMap (CreateTLS), then `kubectl apply -k overlay`, and
// waits until the aggregator Deployment and the agent DaemonSet are
// available on every node.
func (c *Cluster) Install(ctx context.Context, overlay string, timeout time.Duration) error {
	crds := filepath.Join(c.dir, "monitoring-crds.yaml")
	if err := os.WriteFile(crds, []byte(monitoringCRDs), 0o644); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "apply", "-f", crds); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s", "crd/prometheusrules.monitoring.coreos.com", "crd/servicemonitors.monitoring.coreos.com"); err != nil {
		return err
	}
	// What deploy/ mounts and a user makes first (docs/security.md).
	if err := c.CreateTLS(ctx); err != nil {
		return err
	}
	out, err := c.Kubectl(ctx, "apply", "-k", overlay)
	if err != nil {
		return err
	}
	c.logf("kubectl apply -k %s:\n%s", overlay, strings.TrimSpace(out))
	return c.WaitInstalled(ctx, timeout)
}

// WaitInstalled waits until the aggregator Deployment is available and the
// agent DaemonSet's pods are updated and ready on every node.
func (c *Cluster) WaitInstalled(ctx context.Context, timeout time.Duration) error {
	err := proc.Poll(ctx, timeout, time.Second, func() error {
		d, err := c.Client().AppsV1().Deployments(Namespace).Get(ctx, "pullwatch-aggregator", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas != *d.Spec.Replicas || d.Status.AvailableReplicas != *d.Spec.Replicas {
			return fmt.Errorf("aggregator: %d/%d available", d.Status.AvailableReplicas, *d.Spec.Replicas)
		}
		ds, err := c.Client().AppsV1().DaemonSets(Namespace).Get(ctx, "pullwatch-agent", metav1.GetOptions{})
		if err != nil {
			return err
		}
		return daemonSetReady(ds, len(c.Nodes))
	})
	if err != nil {
		out, _ := c.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		ev, _ := c.Kubectl(ctx, "get", "events", "-n", Namespace, "--sort-by=.lastTimestamp")
		logs := ""
		for _, w := range []string{"daemonset/pullwatch-agent", "deployment/pullwatch-aggregator"} {
			l, _ := c.Kubectl(ctx, "-n", Namespace, "logs", w, "--tail=15")
			p, _ := c.Kubectl(ctx, "-n", Namespace, "logs", w, "--previous", "--tail=15")
			logs += fmt.Sprintf("--- %s logs:\n%s\n--- previous:\n%s\n", w, l, p)
		}
		return fmt.Errorf("pullwatch not ready: %w\n%s\n%s\n%s", err, out, lastLines(ev, 25), logs)
	}
	return nil
}

func daemonSetReady(ds *appsv1.DaemonSet, nodes int) error {
	s := ds.Status
	if s.ObservedGeneration < ds.Generation || int(s.DesiredNumberScheduled) != nodes ||
		s.UpdatedNumberScheduled != s.DesiredNumberScheduled || s.NumberReady != s.DesiredNumberScheduled {
		return fmt.Errorf("agent DaemonSet: %d desired, %d updated, %d ready (want %d nodes)",
			s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberReady, nodes)
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
