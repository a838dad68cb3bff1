package deploy_test

import (
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// mountOf returns the volume mounted at the directory holding file in c.
func mountOf(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, file string) corev1.Volume {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if filepath.Dir(file) == filepath.Clean(m.MountPath) || file == m.MountPath {
			for _, v := range spec.Volumes {
				if v.Name == m.Name {
					return v
				}
			}
			t.Fatalf("mount %s names no volume %s", m.MountPath, m.Name)
		}
	}
	t.Fatalf("container %s mounts nothing at %s", c.Name, filepath.Dir(file))
	return corev1.Volume{}
}

// TestTrustMounts follows the agent's --token-file and --ca-file and the
// aggregator's --tls-dir to what deploy/ mounts there
// (docs/security.md): a projected token for audience pullwatch, the
// aggregator's CA from a ConfigMap (never the Secret with its key, which
// every node would then read), and the TLS Secret.
func TestTrustMounts(t *testing.T) {
	ds := only[*appsv1.DaemonSet](t, agentName)
	spec := &ds.Spec.Template.Spec
	ac := containerNamed(t, spec, "")
	inv := invocationOf(t, ac)

	tokenFile := setting(t, ac, inv, "token-file")
	v := mountOf(t, spec, ac, tokenFile)
	var tok *corev1.ServiceAccountTokenProjection
	if v.Projected != nil {
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil && s.ServiceAccountToken.Path == filepath.Base(tokenFile) {
				tok = s.ServiceAccountToken
			}
		}
	}
	switch {
	case tok == nil:
		t.Errorf("--token-file %s is no projected serviceAccountToken (volume %s)", tokenFile, v.Name)
	case tok.Audience != "pullwatch":
		t.Errorf("projected token audience %q, want pullwatch (the aggregator refuses any other)", tok.Audience)
	case tok.ExpirationSeconds == nil || *tok.ExpirationSeconds > 2*3600:
		t.Errorf("projected token expirationSeconds %v, want a short one (≤ 2h)", tok.ExpirationSeconds)
	}
	if setting(t, ac, inv, "insecure") != "false" {
		t.Error("the agent runs with --insecure")
	}

	caFile := setting(t, ac, inv, "ca-file")
	if v := mountOf(t, spec, ac, caFile); v.ConfigMap == nil || v.Secret != nil {
		t.Errorf("--ca-file %s comes from volume %s, want a ConfigMap (the aggregator's Secret holds its private key)", caFile, v.Name)
	}

	d := only[*appsv1.Deployment](t, aggregatorName)
	gspec := &d.Spec.Template.Spec
	gc := containerNamed(t, gspec, "")
	ginv := invocationOf(t, gc)
	tlsDir := setting(t, gc, ginv, "tls-dir")
	if v := mountOf(t, gspec, gc, filepath.Join(tlsDir, "tls.crt")); v.Secret == nil {
		t.Errorf("--tls-dir %s is volume %s, want the TLS Secret", tlsDir, v.Name)
	}
	if setting(t, gc, ginv, "insecure") != "false" {
		t.Error("the aggregator runs with --insecure")
	}
	// --auth and --http-auth default to kubernetes in a cluster; deploy/
	// must not turn them off.
	for _, e := range gc.Env {
		if (e.Name == "PULLWATCH_AUTH" || e.Name == "PULLWATCH_HTTP_AUTH") && strings.EqualFold(e.Value, "none") {
			t.Errorf("the aggregator runs with %s=none", e.Name)
		}
	}
	for _, f := range ginv.flags {
		if (f.name == "auth" || f.name == "http-auth") && strings.EqualFold(f.value, "none") {
			t.Errorf("the aggregator runs with --%s=none", f.name)
		}
	}
}
