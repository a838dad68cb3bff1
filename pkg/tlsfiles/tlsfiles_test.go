package tlsfiles

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned returns a PEM certificate and key for cn.
func selfSigned(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// swap writes files into dir as the kubelet updates a Secret volume: new
// files, then a rename over the old names.
func swap(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func commonName(t *testing.T, k *Keypair) string {
	t.Helper()
	c, err := k.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

func TestKeypairReloads(t *testing.T) {
	dir := t.TempDir()
	c1, k1 := selfSigned(t, "one")
	swap(t, dir, map[string][]byte{CertFile: c1, KeyFile: k1})
	k, err := LoadKeypair(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	k.now = func() time.Time { return now }
	if cn := commonName(t, k); cn != "one" {
		t.Fatalf("serving %q, want one", cn)
	}

	c2, k2 := selfSigned(t, "two")
	swap(t, dir, map[string][]byte{CertFile: c2, KeyFile: k2})
	if cn := commonName(t, k); cn != "one" {
		t.Errorf("reloaded within the second: %q", cn)
	}
	now = now.Add(recheck)
	if cn := commonName(t, k); cn != "two" {
		t.Errorf("after the rotation serving %q, want two", cn)
	}

	// Half-way through an update (a certificate without its key): the
	// previous pair stays, and the error is kept.
	c3, _ := selfSigned(t, "three")
	swap(t, dir, map[string][]byte{CertFile: c3})
	now = now.Add(recheck)
	if cn := commonName(t, k); cn != "two" {
		t.Errorf("with a mismatched pair serving %q, want two still", cn)
	}
	if k.LastError() == nil {
		t.Error("no error kept for the mismatched pair")
	}
	if err := os.Remove(filepath.Join(dir, KeyFile)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(recheck)
	if cn := commonName(t, k); cn != "two" {
		t.Errorf("with the key gone serving %q, want two still", cn)
	}
	if cfg := k.ServerConfig(); cfg.MinVersion == 0 || cfg.GetCertificate == nil {
		t.Errorf("ServerConfig %+v", cfg)
	}
}

func TestLoadKeypairRefuses(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadKeypair(dir); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, CertFile)) {
		t.Errorf("empty dir: %v, want an error naming %s", err, CertFile)
	}
	c1, _ := selfSigned(t, "one")
	_, k2 := selfSigned(t, "two")
	swap(t, dir, map[string][]byte{CertFile: c1, KeyFile: k2})
	if _, err := LoadKeypair(dir); err == nil || !strings.Contains(err.Error(), "key pair") {
		t.Errorf("mismatched pair: %v", err)
	}
}

func TestCAPool(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, CAFile)
	if _, err := LoadCAPool(file); err == nil {
		t.Error("missing file accepted")
	}
	swap(t, dir, map[string][]byte{CAFile: []byte("not pem")})
	if _, err := LoadCAPool(file); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("not PEM: %v", err)
	}
	c1, _ := selfSigned(t, "one")
	swap(t, dir, map[string][]byte{CAFile: c1})
	p, err := LoadCAPool(file)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p.now = func() time.Time { return now }
	first := p.Pool()
	c2, _ := selfSigned(t, "two")
	swap(t, dir, map[string][]byte{CAFile: append(c1, c2...)})
	now = now.Add(recheck)
	if second := p.Pool(); second.Equal(first) {
		t.Error("pool not reloaded after the file changed")
	}
	swap(t, dir, map[string][]byte{CAFile: []byte("garbage")})
	now = now.Add(recheck)
	if p.Pool() == nil {
		t.Error("a bad file dropped the pool")
	}
}
