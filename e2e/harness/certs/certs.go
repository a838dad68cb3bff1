// Package certs makes the certificates the lab's parts serve TLS and sign
// tokens with: self-signed P-256 CAs (CA) and certificates they issue
// (Issue), all under the organization "pullwatch e2e".
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"time"
)

// Organization is the O of every certificate made here.
const Organization = "pullwatch e2e"

// validity is how long certificates made here are valid (from an hour
// ago, so clock skew does not matter).
const validity = 10 * 365 * 24 * time.Hour

// CA makes a self-signed CA certificate for commonName and its P-256 key.
// adjust, when given, changes the template before it is signed (a CA that
// also serves TLS adds its ExtKeyUsage and addresses).
func CA(commonName string, adjust ...func(*x509.Certificate)) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          Serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{Organization}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	for _, f := range adjust {
		f(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// Issue signs tmpl (subject, usages and addresses set by the caller) with
// ca for a fresh P-256 key, filling in the serial number and validity
// (NotAfter only when tmpl has none) and, when tmpl has none, the key
// usage of a TLS leaf. It returns the certificate's DER and the key.
func Issue(tmpl *x509.Certificate, ca *x509.Certificate, caKey any) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = Serial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(validity)
	}
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	return der, key, nil
}

// PEM encodes der as a PEM block of type typ.
func PEM(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// Serial is a random 120-bit serial number.
func Serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
