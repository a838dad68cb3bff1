// Package probetest serves hostile and dying registries for tests: a
// registry whose headers never finish, whose body never ends, whose
// headers are megabytes, that redirects forever, serves another digest,
// presents a certificate for another name, whose token endpoint hangs,
// whose status line is not UTF-8, whose fields are oversized, or that
// never answers at all. Each speaks raw HTTP/1.1 on a loopback listener,
// so it can send what net/http's server never would.
package probetest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Mode is how a hostile registry misbehaves.
type Mode string

// The modes.
const (
	// HangHeaders answers every request with a status line and then one
	// header line every 100ms, never ending the headers.
	HangHeaders Mode = "hang-headers"
	// EndlessBody challenges for a bearer token whose endpoint answers
	// with a body that never ends.
	EndlessBody Mode = "endless-body"
	// HugeHeaders answers every request with 1 MiB of headers.
	HugeHeaders Mode = "huge-headers"
	// RedirectLoop redirects every manifest request to itself.
	RedirectLoop Mode = "redirect-loop"
	// WrongDigest serves every manifest with another digest (WrongDigestValue).
	WrongDigest Mode = "wrong-digest"
	// TLSMismatch speaks TLS with a certificate for another name
	// (wrong.invalid) from its own CA (Hostile.CAPEM).
	TLSMismatch Mode = "tls-mismatch"
	// HangingToken challenges for a bearer token whose endpoint never answers.
	HangingToken Mode = "hanging-token"
	// InvalidUTF8 answers manifest requests with a status line holding
	// bytes that are not UTF-8.
	InvalidUTF8 Mode = "invalid-utf8"
	// Oversized answers manifest requests 429 with a 2,022-byte status
	// line, a 50,000-byte Retry-After, a 300-byte Docker-Content-Digest and
	// a 4 KiB Ratelimit-Remaining.
	Oversized Mode = "oversized"
	// LoopbackRealm challenges for a bearer token at a realm on the
	// loopback network (/internal/token on its own listener).
	LoopbackRealm Mode = "loopback-realm"
	// Silent accepts connections (the kernel does) and never answers: a
	// registry behind a firewall that drops, or a hung process.
	Silent Mode = "silent"
)

// Modes lists every mode.
func Modes() []Mode {
	return []Mode{HangHeaders, EndlessBody, HugeHeaders, RedirectLoop, WrongDigest, TLSMismatch, HangingToken, InvalidUTF8, Oversized, LoopbackRealm, Silent}
}

// WrongDigestValue is the digest a WrongDigest registry serves.
const WrongDigestValue = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"

// Hostile is one hostile registry.
type Hostile struct {
	Mode Mode
	// Addr is host:port on the loopback network.
	Addr string
	// CAPEM is the CA of a TLSMismatch registry's certificate.
	CAPEM []byte

	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]bool
	done  chan struct{}
	wg    sync.WaitGroup
}

// Start serves mode on addr ("127.0.0.1:0" for any port).
func Start(mode Mode, addr string) (*Hostile, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	h := &Hostile{Mode: mode, Addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]bool{}, done: make(chan struct{})}
	if mode == TLSMismatch {
		cfg, ca, err := mismatchedTLS()
		if err != nil {
			ln.Close()
			return nil, err
		}
		h.CAPEM = ca
		h.ln = tls.NewListener(ln, cfg)
	}
	if mode == Silent {
		// Never accept: the kernel completes handshakes into the backlog
		// and nobody ever reads or answers.
		return h, nil
	}
	h.wg.Add(1)
	go h.serve()
	return h, nil
}

// URL is the registry's API base, e.g. http://127.0.0.1:5000/v2.
func (h *Hostile) URL() string {
	if h.Mode == TLSMismatch {
		return "https://" + h.Addr + "/v2"
	}
	return "http://" + h.Addr + "/v2"
}

// Close stops the registry and ends every connection it holds.
func (h *Hostile) Close() error {
	close(h.done)
	err := h.ln.Close()
	h.mu.Lock()
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	return err
}

func (h *Hostile) serve() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		h.mu.Lock()
		h.conns[c] = true
		h.mu.Unlock()
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer func() {
				h.mu.Lock()
				delete(h.conns, c)
				h.mu.Unlock()
				c.Close()
			}()
			h.conn(c)
		}()
	}
}

func (h *Hostile) conn(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		if !h.answer(c, req) {
			return
		}
	}
}

// answer writes the mode's answer to req; false ends the connection.
func (h *Hostile) answer(w io.Writer, req *http.Request) bool {
	ping := req.URL.Path == "/v2/"
	token := strings.HasSuffix(req.URL.Path, "/token")
	plain := func(status string, headers ...string) bool {
		fmt.Fprintf(w, "HTTP/1.1 %s\r\n%sContent-Length: 0\r\n\r\n", status, lines(headers))
		return true
	}
	challenge := func(realm string) bool {
		return plain("401 Unauthorized", fmt.Sprintf(`Www-Authenticate: Bearer realm="%s",service="hostile"`, realm))
	}
	switch h.Mode {
	case HangHeaders:
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\n")
		for i := 0; ; i++ {
			select {
			case <-h.done:
				return false
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := fmt.Fprintf(w, "X-Still-Coming-%d: yes\r\n", i); err != nil {
				return false
			}
		}
	case EndlessBody, HangingToken:
		switch {
		case ping:
			return challenge("http://" + h.Addr + "/token")
		case !token:
			return plain("404 Not Found")
		case h.Mode == HangingToken:
			// Until the client gives up (its read returns) or Close.
			if c, ok := w.(net.Conn); ok {
				_, _ = c.Read(make([]byte, 1))
			} else {
				<-h.done
			}
			return false
		}
		// A token that never ends.
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
		fmt.Fprintf(w, "%x\r\n%s\r\n", len(`{"token":"`), `{"token":"`)
		chunk := fmt.Sprintf("%x\r\n%s\r\n", 32<<10, strings.Repeat("a", 32<<10))
		for {
			select {
			case <-h.done:
				return false
			default:
			}
			if _, err := io.WriteString(w, chunk); err != nil {
				return false
			}
		}
	case HugeHeaders:
		var b strings.Builder
		b.WriteString("HTTP/1.1 200 OK\r\n")
		line := strings.Repeat("x", 1000)
		for i := 0; b.Len() < 1<<20; i++ {
			fmt.Fprintf(&b, "X-Junk-%d: %s\r\n", i, line)
		}
		b.WriteString("Content-Length: 0\r\n\r\n")
		_, err := io.WriteString(w, b.String())
		return err == nil
	case RedirectLoop:
		if ping {
			return plain("200 OK")
		}
		return plain("302 Found", "Location: "+req.URL.Path)
	case WrongDigest:
		if ping {
			return plain("200 OK")
		}
		return plain("200 OK", "Content-Type: application/vnd.oci.image.manifest.v1+json", "Docker-Content-Digest: "+WrongDigestValue)
	case TLSMismatch:
		return plain("200 OK")
	case InvalidUTF8:
		if ping {
			return plain("200 OK")
		}
		return plain("418 \xff\xfe not \xc3\x28 UTF-8")
	case Oversized:
		if ping {
			return plain("200 OK")
		}
		return plain("429 "+strings.Repeat("T", 2022),
			"Retry-After: "+strings.Repeat("9", 50000),
			"Docker-Content-Digest: sha256:"+strings.Repeat("a", 293),
			"Ratelimit-Remaining: "+strings.Repeat("7", 4096))
	case LoopbackRealm:
		switch {
		case ping:
			return challenge("http://" + h.Addr + "/internal/token")
		case token:
			return plain("500 internal secret status text")
		}
		return plain("200 OK", "Content-Type: application/vnd.oci.image.manifest.v1+json")
	}
	return false
}

func lines(headers []string) string {
	var b strings.Builder
	for _, h := range headers {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	return b.String()
}

// mismatchedTLS is a server certificate for wrong.invalid (and no IP)
// from a CA of its own, and that CA in PEM.
func mismatchedTLS() (*tls.Config, []byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "probetest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "wrong.invalid"}, DNSNames: []string{"wrong.invalid"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
	return cfg, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), nil
}
