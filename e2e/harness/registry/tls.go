package registry

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/pullwatch/pullwatch/e2e/harness/certs"
)

// ensureCerts creates ca.crt, server.crt and server.key in r.dir unless they
// already exist (Restart and a second Start on the same dir keep the CA).
func (r *Registry) ensureCerts() error {
	caFile := filepath.Join(r.dir, "ca.crt")
	certFile := filepath.Join(r.dir, "server.crt")
	keyFile := filepath.Join(r.dir, "server.key")
	if !exists(caFile) || !exists(certFile) || !exists(keyFile) {
		ips := slices.Clone(r.opts.CertIPs)
		if ip := net.ParseIP(r.opts.Host); ip != nil {
			ips = append(ips, ip)
		}
		if err := generateCerts(caFile, certFile, keyFile, ips); err != nil {
			return fmt.Errorf("registry TLS: %w", err)
		}
	}
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return errors.New("registry TLS: no certificate in " + caFile)
	}
	r.caFile, r.caPool = caFile, pool
	return nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// generateCerts writes a CA and a server certificate it signs for
// 127.0.0.1, ::1, localhost and extraIPs.
func generateCerts(caFile, certFile, keyFile string, extraIPs []net.IP) error {
	ca, caKey, err := certs.CA("pullwatch e2e registry CA")
	if err != nil {
		return err
	}
	der, key, err := certs.Issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1", Organization: []string{certs.Organization}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: sanIPs(extraIPs),
		DNSNames:    []string{"localhost"},
	}, ca, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(caFile, "CERTIFICATE", ca.Raw, 0o644); err != nil {
		return err
	}
	if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writePEM(keyFile, "PRIVATE KEY", keyDER, 0o600)
}

// sanIPs is 127.0.0.1 and ::1 followed by extra, without duplicates.
func sanIPs(extra []net.IP) []net.IP {
	out := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, ip := range extra {
		if !slices.ContainsFunc(out, ip.Equal) {
			out = append(out, ip)
		}
	}
	return out
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, certs.PEM(typ, der), mode)
}
