package registry

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestEnsureCertsReusesOnlyWhatFits: a registry started again on the same
// directory keeps its CA while the certificate still names its address,
// and gets new certificates once the address changed (the box's subnet
// differs from the earlier run's: x509 "valid for 10.203.1.10, not
// 10.203.2.10"), or the files are damaged.
func TestEnsureCertsReusesOnlyWhatFits(t *testing.T) {
	dir := t.TempDir()
	start := func(host string) *Registry {
		t.Helper()
		r := &Registry{dir: dir, opts: Options{Host: host, TLS: true}}
		if err := r.ensureCerts(); err != nil {
			t.Fatalf("ensureCerts for %s: %v", host, err)
		}
		return r
	}
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	names := func() []net.IP {
		t.Helper()
		block, _ := pem.Decode(read("server.crt"))
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c.IPAddresses
	}

	start("10.203.1.10")
	ca1 := read("ca.crt")
	start("10.203.1.10")
	if !bytes.Equal(read("ca.crt"), ca1) {
		t.Error("a second start on the same address replaced the CA")
	}

	r := start("10.203.2.10")
	if bytes.Equal(read("ca.crt"), ca1) {
		t.Error("the address changed but the old CA was kept")
	}
	if err := certsFit(r.caFile, filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), sanIPs([]net.IP{net.ParseIP("10.203.2.10")}), time.Now()); err != nil {
		t.Errorf("after the address changed: %v (certificate names %v)", err, names())
	}
	if err := certsFit(r.caFile, filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), []net.IP{net.ParseIP("10.203.1.10")}, time.Now()); err == nil {
		t.Error("the new certificate still fits the old address")
	}
	// The pool the harness verifies with is the new CA's.
	if !r.caPool.Equal(mustPool(t, read("ca.crt"))) {
		t.Error("the registry's CA pool is not the new CA")
	}

	// A key that is not the certificate's, or a missing CA: new files.
	ca2 := read("ca.crt")
	if err := os.WriteFile(filepath.Join(dir, "server.key"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	start("10.203.2.10")
	if bytes.Equal(read("ca.crt"), ca2) {
		t.Error("a damaged key was kept")
	}
	ca3 := read("ca.crt")
	if err := os.Remove(filepath.Join(dir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	start("10.203.2.10")
	if bytes.Equal(read("ca.crt"), ca3) || len(read("ca.crt")) == 0 {
		t.Error("a missing CA was not made again")
	}

	// Expired (or expiring within a day): replaced.
	if err := certsFit(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), nil, time.Now().Add(20*365*24*time.Hour)); err == nil {
		t.Error("a certificate 20 years from now still fits")
	}
}

func mustPool(t *testing.T, pemBytes []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemBytes) {
		t.Fatal("no certificate")
	}
	return p
}
