package registry

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/certs"
)

// ensureCerts creates ca.crt, server.crt and server.key in r.dir unless
// the ones there still fit (Restart and a second Start on the same dir keep
// the CA). Files from an earlier run whose server certificate does not name
// every address this one serves on (the box's subnet changed: make demo
// took 10.203.1.0/24, so make demo-cluster got 10.203.2.0/24), that its CA
// did not sign, that has expired or whose key is not its own are replaced.
func (r *Registry) ensureCerts() error {
	caFile := filepath.Join(r.dir, "ca.crt")
	certFile := filepath.Join(r.dir, "server.crt")
	keyFile := filepath.Join(r.dir, "server.key")
	ips := slices.Clone(r.opts.CertIPs)
	if ip := net.ParseIP(r.opts.Host); ip != nil {
		ips = append(ips, ip)
	}
	if err := certsFit(caFile, certFile, keyFile, sanIPs(ips), time.Now()); err != nil {
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

// certsFit says why the CA, server certificate and key in these files
// cannot serve ips at now (nil: they can): a file is missing or
// unreadable, the key does not belong to the certificate, the CA did not
// sign it for server auth, it is not valid at now (or within the next
// day), or it names not every address of ips.
func certsFit(caFile, certFile, keyFile string, ips []net.IP, now time.Time) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("%s: %w", certFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	if block, _ := pem.Decode(caPEM); block == nil || block.Type != "CERTIFICATE" {
		return fmt.Errorf("%s: no certificate", caFile)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	for _, at := range []time.Time{now, now.Add(24 * time.Hour)} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return fmt.Errorf("%s: %w", certFile, err)
		}
	}
	for _, ip := range ips {
		if err := leaf.VerifyHostname(ip.String()); err != nil {
			return fmt.Errorf("%s: %w", certFile, err)
		}
	}
	return nil
}

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
