package kubeapi

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/certs"
)

// pki is the cluster's key material, all generated in Go at Start:
//   - a CA that signs the API server's serving certificate and the client
//     certificates KubeconfigFor issues (the API server trusts it through
//     --client-ca-file);
//   - the serving certificate (127.0.0.1, localhost, kubernetes.default.svc…);
//   - the RSA key that signs and verifies ServiceAccount tokens.
type pki struct {
	ca    *x509.Certificate
	caKey crypto.Signer
	caPEM []byte
}

func newPKI() (*pki, error) {
	ca, key, err := certs.CA("pullwatch e2e kube CA")
	if err != nil {
		return nil, err
	}
	return &pki{ca: ca, caKey: key, caPEM: certs.PEM("CERTIFICATE", ca.Raw)}, nil
}

// serving returns a PEM certificate and key for the API server, valid for
// loopback, the kubernetes Service's cluster IP and extraIPs.
func (p *pki) serving(extraIPs []net.IP) (certPEM, keyPEM []byte, err error) {
	return p.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver", Organization: []string{"pullwatch e2e"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)}, extraIPs...),
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
	})
}

// client returns a PEM client certificate and key for user in groups: the
// API server's x509 authenticator takes the user from the CN and the groups
// from the O attributes.
func (p *pki) client(user string, groups []string) (certPEM, keyPEM []byte, err error) {
	return p.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func (p *pki) issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	tmpl.NotAfter = time.Now().Add(365 * 24 * time.Hour)
	der, key, err := certs.Issue(tmpl, p.ca, p.caKey)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return certs.PEM("CERTIFICATE", der), certs.PEM("PRIVATE KEY", keyDER), nil
}

// serviceAccountKey returns a PEM RSA private key for
// --service-account-signing-key-file (the public half, for
// --service-account-key-file, is derived from it by the API server).
func serviceAccountKey() ([]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	return certs.PEM("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)), nil
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("kubeapi: %w", err)
	}
	return nil
}

// randomToken returns 32 random hex characters.
func randomToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
