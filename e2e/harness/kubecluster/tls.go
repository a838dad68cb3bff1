package kubecluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/certs"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// The objects deploy/ mounts for TLS between the agents and the
// aggregator, which a user makes before installing (docs/security.md).
const (
	AggregatorTLSSecret = "pullwatch-aggregator-tls"
	AggregatorCAConfig  = "pullwatch-aggregator-ca"
	// AggregatorServerName is the name agents verify (the Service's).
	AggregatorServerName = "pullwatch-aggregator.pullwatch.svc"
)

// CreateTLS makes the aggregator's TLS material as docs/security.md tells
// a user without cert-manager to: a CA of its own, a serving certificate
// for the Service's name in the Secret pullwatch-aggregator-tls (tls.crt,
// tls.key, ca.crt) and the CA alone in the ConfigMap
// pullwatch-aggregator-ca, both in namespace pullwatch. Objects that exist
// already are kept. Install calls it before applying deploy/. The material
// is made once per box: a second install (the chart's, after the
// kustomize one is removed) gets the same CA, which the box's Prometheus
// already verifies the aggregator with.
func (c *Cluster) CreateTLS(ctx context.Context) error {
	if err := c.API.EnsureNamespace(ctx, Namespace); err != nil {
		return err
	}
	crtPEM, keyPEM, caPEM, err := c.aggregatorTLSFiles()
	if err != nil {
		return err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: AggregatorTLSSecret},
		Type:       corev1.SecretTypeTLS,
		Data: map[string][]byte{
			corev1.TLSCertKey:       crtPEM,
			corev1.TLSPrivateKeyKey: keyPEM,
			"ca.crt":                caPEM,
		},
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: AggregatorCAConfig},
		Data:       map[string]string{"ca.crt": string(caPEM)},
	}
	cl := c.Client()
	if _, err := cl.CoreV1().Secrets(Namespace).Create(ctx, secret, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kubecluster: secret %s: %w", AggregatorTLSSecret, err)
	}
	if _, err := cl.CoreV1().ConfigMaps(Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kubecluster: configmap %s: %w", AggregatorCAConfig, err)
	}
	c.logf("created Secret %s and ConfigMap %s in %s", AggregatorTLSSecret, AggregatorCAConfig, Namespace)
	return nil
}

// ScrapeTokenSecret is the Secret the installed aggregator keeps its
// scraper's token in (deploy/metrics-reader.yaml, PULLWATCH_SCRAPE_TOKEN_SECRET):
// a token of pullwatch-metrics-scraper for audience pullwatch-metrics, the
// one the Prometheus operator's ServiceMonitor sends.
const ScrapeTokenSecret = "pullwatch-metrics-token"

// syncScrapeToken waits (up to a minute) for the aggregator to write its
// token into ScrapeTokenSecret, writes it to ScrapeTokenFile, and then keeps
// the file equal to the Secret every 2 s until the cluster stops, as the
// operator re-renders Prometheus' configuration when the Secret changes (a
// reinstall deletes the Secret, revoking the token bound to it, and the
// new aggregator writes another).
func (c *Cluster) syncScrapeToken(ctx context.Context) error {
	file := c.ScrapeTokenFile()
	var last string
	write := func(ctx context.Context) error {
		s, err := c.Client().CoreV1().Secrets(Namespace).Get(ctx, ScrapeTokenSecret, metav1.GetOptions{})
		if err != nil {
			return err
		}
		tok := string(s.Data["token"])
		if tok == "" {
			return fmt.Errorf("secret %s/%s has no token yet", Namespace, ScrapeTokenSecret)
		}
		if tok == last {
			return nil
		}
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(tok), 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, file); err != nil {
			return err
		}
		last = tok
		c.logf("scrape token from Secret %s/%s (expires %s)", Namespace, ScrapeTokenSecret, s.Annotations["pullwatch.io/token-expires"])
		return nil
	}
	if err := proc.Poll(ctx, time.Minute, time.Second, func() error { return write(ctx) }); err != nil {
		return fmt.Errorf("kubecluster: the aggregator's scrape token: %w", err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.stopSync = append(c.stopSync, cancel)
	c.mu.Unlock()
	go func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				rctx, rcancel := context.WithTimeout(sctx, 5*time.Second)
				_ = write(rctx) // missing during a reinstall: the next tick
				rcancel()
			}
		}
	}()
	return nil
}

// AggregatorCA writes the CA of the ConfigMap pullwatch-aggregator-ca (as
// installed: what a user's scraper verifies the aggregator's HTTPS with)
// under the cluster's directory and returns the file's path.
func (c *Cluster) AggregatorCA(ctx context.Context) (string, error) {
	cm, err := c.Client().CoreV1().ConfigMaps(Namespace).Get(ctx, AggregatorCAConfig, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("kubecluster: configmap %s: %w", AggregatorCAConfig, err)
	}
	file := filepath.Join(c.dir, "aggregator-ca.crt")
	if err := os.WriteFile(file, []byte(cm.Data["ca.crt"]), 0o644); err != nil {
		return "", err
	}
	return file, nil
}

// AggregatorTLS is a client TLS configuration that verifies the
// aggregator's certificate (AggregatorCA) for the Service's name.
func (c *Cluster) AggregatorTLS(ctx context.Context) (*tls.Config, error) {
	file, err := c.AggregatorCA(ctx)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("kubecluster: %s: no certificate", file)
	}
	return &tls.Config{RootCAs: pool, ServerName: AggregatorServerName, MinVersion: tls.VersionTLS12}, nil
}

// aggregatorTLSFiles are the box's aggregator certificate, key and CA (PEM),
// made on first use and kept in the box's directory.
func (c *Cluster) aggregatorTLSFiles() (crtPEM, keyPEM, caPEM []byte, err error) {
	dir := filepath.Join(c.dir, "aggregator-tls")
	files := []string{filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")}
	if crtPEM, err = os.ReadFile(files[0]); err == nil {
		if keyPEM, err = os.ReadFile(files[1]); err == nil {
			if caPEM, err = os.ReadFile(files[2]); err == nil {
				return crtPEM, keyPEM, caPEM, nil
			}
		}
	}
	ca, caKey, err := certs.CA("pullwatch-ca (kubecluster)")
	if err != nil {
		return nil, nil, nil, err
	}
	der, key, err := certs.Issue(&x509.Certificate{
		DNSNames:    []string{AggregatorServerName, AggregatorServerName + ".cluster.local"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	crtPEM, keyPEM, caPEM = certs.PEM("CERTIFICATE", der), certs.PEM("PRIVATE KEY", keyDER), certs.PEM("CERTIFICATE", ca.Raw)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, err
	}
	for i, b := range [][]byte{crtPEM, keyPEM, caPEM} {
		if err := os.WriteFile(files[i], b, 0o600); err != nil {
			return nil, nil, nil, err
		}
	}
	return crtPEM, keyPEM, caPEM, nil
}
