package registry

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
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

// GenerateCA makes a self-signed CA; exported for tests that need a second,
// untrusted CA. It returns the certificate and its key.
func GenerateCA(commonName string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"pullwatch e2e"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// generateCerts writes a CA and a server certificate it signs for
// 127.0.0.1, ::1, localhost and extraIPs.
func generateCerts(caFile, certFile, keyFile string, extraIPs []net.IP) error {
	ca, caKey, err := GenerateCA("pullwatch e2e registry CA")
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "127.0.0.1", Organization: []string{"pullwatch e2e"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  sanIPs(extraIPs),
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
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
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
