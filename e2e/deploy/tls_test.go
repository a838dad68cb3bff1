package deploy_test

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
)

// TestHelmTLSModes: tls.mode decides who makes Secret
// pullwatch-aggregator-tls and ConfigMap pullwatch-aggregator-ca. existing
// (the default, deploy/'s way) renders neither; generate renders both, a
// certificate for the Service's names that the ConfigMap's CA verifies, the
// ConfigMap holding no key; certManager renders a Certificate for the same
// names into that Secret (and the ConfigMap from caBundle when given): from
// the issuer named, or without one, deploy/components/cert-manager's own
// self-signed CA, object for object.
func TestHelmTLSModes(t *testing.T) {
	const secret, configMap, certificate = "Secret.core pullwatch/pullwatch-aggregator-tls", "ConfigMap.core pullwatch/pullwatch-aggregator-ca", "Certificate.cert-manager.io pullwatch/pullwatch-aggregator-tls"
	svc := "pullwatch-aggregator." + namespace + ".svc"

	objs, err := decodeMaps("helm template (tls.mode default)", helmTemplate(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{secret, configMap, certificate} {
		if _, ok := objs[k]; ok {
			t.Errorf("tls.mode=existing renders %s: the user makes it", k)
		}
	}

	objs, err = decodeMaps("helm template (tls.mode=generate)", helmTemplate(t, "--set", "tls.mode=generate"))
	if err != nil {
		t.Fatal(err)
	}
	sec, cm := objs[secret], objs[configMap]
	if sec == nil || cm == nil {
		t.Fatalf("tls.mode=generate renders no %s or %s", secret, configMap)
	}
	data, _ := sec["data"].(map[string]any)
	crtPEM, err := base64.StdEncoding.DecodeString(data["tls.crt"].(string))
	if err != nil {
		t.Fatal(err)
	}
	caPEM := cm["data"].(map[string]any)["ca.crt"].(string)
	if strings.Contains(caPEM, "PRIVATE KEY") {
		t.Errorf("the agents' ConfigMap holds a private key")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		t.Fatalf("ConfigMap ca.crt is no PEM certificate:\n%s", caPEM)
	}
	block, _ := pem.Decode(crtPEM)
	if block == nil {
		t.Fatalf("Secret tls.crt is no PEM:\n%s", crtPEM)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	// What the agents (--ca-file, the Service's name) and the
	// ServiceMonitor (serverName) verify.
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: svc, Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("the generated certificate does not verify for %s with the ConfigMap's CA: %v", svc, err)
	}

	// No issuer named: deploy/components/cert-manager's own CA, object for
	// object.
	want, err := decodeMaps("kubectl kustomize (cert-manager)", kustomizeWith(t, "cert-manager"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeMaps("helm template (tls.mode=certManager)", helmTemplate(t, "--set", "tls.mode=certManager"))
	if err != nil {
		t.Fatal(err)
	}
	compareObjects(t, want, got)

	objs, err = decodeMaps("helm template (tls.mode=certManager)", helmTemplate(t, "--set", "tls.mode=certManager",
		"--set", "tls.certManager.issuerRef.name=pki", "--set", "tls.certManager.issuerRef.kind=ClusterIssuer",
		"--set-string", "tls.certManager.caBundle="+caPEM))
	if err != nil {
		t.Fatal(err)
	}
	c := objs[certificate]
	if c == nil {
		t.Fatalf("tls.mode=certManager renders no %s", certificate)
	}
	spec, _ := c["spec"].(map[string]any)
	var names []string
	for _, n := range spec["dnsNames"].([]any) {
		names = append(names, n.(string))
	}
	if spec["secretName"] != "pullwatch-aggregator-tls" || !slices.Contains(names, svc) {
		t.Errorf("Certificate secretName %v, dnsNames %v: want pullwatch-aggregator-tls for %s", spec["secretName"], names, svc)
	}
	if ref, _ := spec["issuerRef"].(map[string]any); ref["name"] != "pki" || ref["kind"] != "ClusterIssuer" {
		t.Errorf("Certificate issuerRef %v", spec["issuerRef"])
	}
	if got := objs[configMap]; got == nil || got["data"].(map[string]any)["ca.crt"] != caPEM {
		t.Errorf("tls.certManager.caBundle not in %s: %v", configMap, got)
	}
	if _, ok := objs[secret]; ok {
		t.Errorf("tls.mode=certManager renders %s itself: cert-manager writes it", secret)
	}
}
