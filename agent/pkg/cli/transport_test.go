package cli

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

	"github.com/pullwatch/pullwatch/pkg/logging/logtest"
)

func TestTransportDialOptions(t *testing.T) {
	log, buf := logtest.New()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")

	tf := transportFlags{tokenFile: missing, caFile: missing}
	if _, err := tf.dialOptions(log, "127.0.0.1:9400"); err == nil || !strings.Contains(err.Error(), "--ca-file") || !strings.Contains(err.Error(), "--insecure") {
		t.Errorf("no CA file: %v, want an error naming --ca-file and --insecure", err)
	}

	// Plaintext, no token file: one option (the transport), said in the log.
	tf = transportFlags{tokenFile: missing, insecure: true}
	opts, err := tf.dialOptions(log, "127.0.0.1:9400")
	if err != nil || len(opts) != 1 {
		t.Fatalf("insecure without token: %d options, %v", len(opts), err)
	}
	if !strings.Contains(buf.String(), "without TLS") {
		t.Errorf("log does not say the stream is plaintext:\n%s", buf)
	}

	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, testCA(t), 0o644); err != nil {
		t.Fatal(err)
	}
	tf = transportFlags{tokenFile: filepath.Join(dir, "token"), caFile: ca}
	opts, err = tf.dialOptions(log, "kubernetes:///pullwatch-aggregator.pullwatch:grpc")
	if err != nil || len(opts) != 2 {
		t.Fatalf("TLS with token: %d options, %v", len(opts), err)
	}
	if !strings.Contains(buf.String(), "server_name=pullwatch-aggregator.pullwatch.svc") {
		t.Errorf("server name not derived from the Service:\n%s", buf)
	}
}

// testCA is a fresh self-signed certificate (any will do: nothing connects).
func testCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pullwatch-ca"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
