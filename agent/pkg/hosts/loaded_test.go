package hosts

import (
	"context"
	"encoding/pem"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestClientsKeptWhileFilesUnchanged: the images of one registry host
// share its endpoints' clients (one transport, its connections reused)
// until its hosts.toml or a file it names changes; hosts without a
// hosts.toml share the default client.
func TestClientsKeptWhileFilesUnchanged(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs.d")
	ca := filepath.Join(dir, "elsewhere", "ca.crt")
	writeFile(t, ca, "not a certificate yet")
	hostsFile := filepath.Join(certs, "upstream.example:5000", "hosts.toml")
	writeFile(t, hostsFile, `server = "https://upstream.example:5000"
[host."https://mirror.example:5001"]
  capabilities = ["pull", "resolve"]
`)
	c, err := NewContainerd(context.Background(), ContainerdOptions{ConfigFile: filepath.Join(dir, "none.toml"), ConfigPath: certs})
	if err != nil {
		t.Fatal(err)
	}
	endpoints := func(image string) []Endpoint {
		t.Helper()
		eps, err := c.Endpoints(context.Background(), mustRef(t, image))
		if err != nil {
			t.Fatalf("%s: %v", image, err)
		}
		return eps
	}
	a, b := endpoints("upstream.example:5000/app:v1"), endpoints("upstream.example:5000/other:v2")
	if a[0].Client != b[0].Client || a[1].Client != b[1].Client {
		t.Errorf("two images of one host got new clients with unchanged files")
	}
	if d1, d2 := endpoints("plain.example/app:v1"), endpoints("plain.example/app:v2"); d1[0].Client != d2[0].Client {
		t.Errorf("two images without a hosts.toml got two default clients")
	}

	// hosts.toml now names a ca file outside its directory: new clients;
	// then the ca file changes: new clients again.
	writeFile(t, hostsFile, `server = "https://upstream.example:5000"
[host."https://mirror.example:5001"]
  capabilities = ["pull", "resolve"]
  skip_verify = false
  ca = "`+ca+`"
`)
	// (containerd's loader refuses a ca that is not a certificate: the
	// error is the image's, and nothing is kept.)
	if _, err := c.Endpoints(context.Background(), mustRef(t, "upstream.example:5000/app:v1")); err == nil {
		t.Fatalf("a ca file that is no certificate was accepted")
	}
	writeFile(t, ca, string(testCertPEM(t)))
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(ca, later, later); err != nil {
		t.Fatal(err)
	}
	c1 := endpoints("upstream.example:5000/app:v1")
	if c1[0].Client == a[0].Client {
		t.Errorf("hosts.toml changed, the clients did not")
	}
	if c2 := endpoints("upstream.example:5000/app:v1"); c2[0].Client != c1[0].Client {
		t.Errorf("unchanged files, new clients")
	}
	writeFile(t, ca, string(testCertPEM(t)))
	later = later.Add(time.Second)
	if err := os.Chtimes(ca, later, later); err != nil {
		t.Fatal(err)
	}
	if c3 := endpoints("upstream.example:5000/app:v1"); c3[0].Client == c1[0].Client {
		t.Errorf("the ca file changed, the clients did not")
	}
}

// testCertPEM is a fresh test server's certificate, PEM.
func testCertPEM(t *testing.T) []byte {
	t.Helper()
	srv := httptest.NewTLSServer(nil)
	defer srv.Close()
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}
