package certs

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"testing"
)

func TestIssuedCertificateVerifiesAgainstItsCA(t *testing.T) {
	ca, caKey, err := CA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	if !ca.IsCA || ca.Subject.CommonName != "test CA" || ca.Subject.Organization[0] != Organization {
		t.Fatalf("CA %+v", ca.Subject)
	}
	der, _, err := Issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}, ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
		t.Errorf("verify: %v", err)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	other, _, err := CA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	untrusted := x509.NewCertPool()
	untrusted.AddCert(other)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: untrusted}); err == nil {
		t.Error("a certificate verified against a CA that did not sign it")
	}
}
