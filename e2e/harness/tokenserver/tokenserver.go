// Package tokenserver is a small token server for docker-registry 2.8's
// bearer-token auth (the registry's auth.token: realm, service, issuer,
// rootcertbundle), for end-to-end tests.
//
// It follows the distribution token spec: GET <realm>?service=S&scope=
// repository:NAME:ACTIONS (Basic credentials optional), and the OAuth2 form
// (POST grant_type=password) containerd tries first when it has credentials.
// Tokens are JWTs signed ES256 with an ECDSA P-256 key; the header's x5c
// carries the signing certificate, which is also the registry's
// rootcertbundle (distribution 2.8 registry/auth/token/token.go verifies
// the x5c chain against rootcertbundle, then the signature with the leaf's
// key; its ClaimSet.Audience is a single string).
//
// The JWT is written by hand (header.payload.signature, base64url without
// padding, ES256 signature r||s with 32 bytes each): the e2e module has no
// JOSE/JWT library, and the few lines here are easier to audit than a new
// dependency.
package tokenserver

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/certs"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// Anonymous is what a token request without credentials gets.
type Anonymous int

const (
	// AnonymousPull: a token granting pull (public repositories).
	AnonymousPull Anonymous = iota
	// AnonymousRefuse: 401 from the token server.
	AnonymousRefuse
	// AnonymousNoAccess: a token with an empty access list, as Docker Hub
	// answers for a private repository; the registry then answers 401.
	AnonymousNoAccess
)

func (a Anonymous) String() string {
	switch a {
	case AnonymousPull:
		return "pull"
	case AnonymousRefuse:
		return "refuse"
	case AnonymousNoAccess:
		return "no-access"
	}
	return fmt.Sprintf("Anonymous(%d)", int(a))
}

// Options configure Start.
type Options struct {
	// Service is the registry's service name, the tokens' audience
	// (default "pullwatch-e2e-registry").
	Service string
	// Issuer is the tokens' iss (default "pullwatch-e2e-token-server").
	Issuer string
	// Users authenticate with Basic auth (user → password); a known user
	// gets every action it asks for (pull, push, delete, *), unless Grant says otherwise.
	Users map[string]string
	// Anonymous is what requests without credentials get (default AnonymousPull).
	Anonymous Anonymous
	// Grant, when set, decides the actions an authenticated user gets on a
	// repository out of those requested.
	Grant func(user, repository string, requested []string) []string
	// Lifetime is the tokens' expires_in (default 5 minutes).
	Lifetime time.Duration
	// Delay holds every answer back this long (a slow token server; also
	// makes concurrent requests overlap deterministically).
	Delay time.Duration
	// TLS serves HTTPS with a certificate for 127.0.0.1, ::1 and localhost
	// (CAFile trusts it).
	TLS bool
	// Host names the server in URL and Realm (default "localhost"). The
	// server listens on 127.0.0.1 either way; the default is a name rather
	// than the IP because go-containerregistry (which the harness pushes
	// with) refuses token realms at loopback or private IP literals (an
	// SSRF guard, go-containerregistry #2258). Clients resolve localhost
	// through /etc/hosts.
	Host string
}

// Request is one token request the server answered.
type Request struct {
	Time      time.Time
	Method    string
	User      string // "" for anonymous; never the password
	UserAgent string
	Service   string
	Scopes    []string
	Status    int // HTTP status of the answer
	Granted   []Access
}

// Access is one entry of a token's access claim.
type Access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// Server is a running token server.
type Server struct {
	opts     Options
	srv      *httptest.Server
	key      *ecdsa.PrivateKey
	cert     *x509.Certificate
	certFile string
	caFile   string

	mu        sync.Mutex
	anonymous Anonymous
	delay     time.Duration
	log       []Request
}

// Start generates the signing key and certificate (written to
// dir/token-signing.crt, the registry's rootcertbundle) and serves the
// token endpoint on a free port of 127.0.0.1.
func Start(dir string, opts Options) (*Server, error) {
	if opts.Service == "" {
		opts.Service = "pullwatch-e2e-registry"
	}
	if opts.Issuer == "" {
		opts.Issuer = "pullwatch-e2e-token-server"
	}
	if opts.Lifetime <= 0 {
		opts.Lifetime = 5 * time.Minute
	}
	if opts.Host == "" {
		opts.Host = "localhost"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	key, cert, err := selfSigned(opts.Issuer, false)
	if err != nil {
		return nil, fmt.Errorf("tokenserver: signing certificate: %w", err)
	}
	s := &Server{opts: opts, key: key, cert: cert, anonymous: opts.Anonymous, delay: opts.Delay, certFile: filepath.Join(dir, "token-signing.crt")}
	if err := os.WriteFile(s.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", s.serveToken)
	s.srv = httptest.NewUnstartedServer(mux)
	if opts.TLS {
		tlsKey, tlsCert, err := selfSigned("pullwatch e2e token server", true)
		if err != nil {
			return nil, fmt.Errorf("tokenserver: TLS certificate: %w", err)
		}
		s.caFile = filepath.Join(dir, "token-server-ca.crt")
		if err := os.WriteFile(s.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsCert.Raw}), 0o644); err != nil {
			return nil, err
		}
		s.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{{Certificate: [][]byte{tlsCert.Raw}, PrivateKey: tlsKey, Leaf: tlsCert}}}
		s.srv.StartTLS()
	} else {
		s.srv.Start()
	}
	return s, nil
}

// Close stops serving.
func (s *Server) Close() { s.srv.Close() }

// URL is the server's base URL (http://localhost:PORT, https://… with
// TLS; see Options.Host).
func (s *Server) URL() string {
	u, err := url.Parse(s.srv.URL)
	if err != nil {
		return s.srv.URL
	}
	u.Host = net.JoinHostPort(s.opts.Host, u.Port())
	return u.String()
}

// Addr is the listening address, 127.0.0.1:PORT.
func (s *Server) Addr() string { return s.srv.Listener.Addr().String() }

// Realm is the token endpoint, the registry's auth.token realm.
func (s *Server) Realm() string { return s.URL() + "/token" }

// Service and Issuer are the values tokens carry.
func (s *Server) Service() string { return s.opts.Service }
func (s *Server) Issuer() string  { return s.opts.Issuer }

// CertFile is the PEM signing certificate (the registry's rootcertbundle).
func (s *Server) CertFile() string { return s.certFile }

// CAFile is the PEM certificate a client trusts for TLS ("" without TLS).
func (s *Server) CAFile() string { return s.caFile }

// TokenAuth is the registry configuration that trusts this server.
func (s *Server) TokenAuth() *registry.TokenAuth {
	return &registry.TokenAuth{Realm: s.Realm(), Service: s.opts.Service, Issuer: s.opts.Issuer, RootCertBundle: s.certFile}
}

// SetAnonymous changes what anonymous requests get from now on.
func (s *Server) SetAnonymous(a Anonymous) {
	s.mu.Lock()
	s.anonymous = a
	s.mu.Unlock()
}

// SetDelay changes how long answers are held back from now on.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Requests returns the requests answered so far, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log)
}

// Count is how many answered requests match (all with a nil match).
func (s *Server) Count(match func(Request) bool) int {
	n := 0
	for _, r := range s.Requests() {
		if match == nil || match(r) {
			n++
		}
	}
	return n
}

// tokenResponse is the token spec's answer; token and access_token are
// the same, for clients of either generation.
type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	rec := Request{Time: time.Now(), Method: r.Method, UserAgent: r.UserAgent()}
	defer func() {
		s.mu.Lock()
		s.log = append(s.log, rec)
		s.mu.Unlock()
	}()
	fail := func(code int, msg string) {
		rec.Status = code
		if code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Basic realm="pullwatch-e2e-token-server"`)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": "UNAUTHORIZED", "message": msg}}})
	}

	var user, pass string
	var hasCreds bool
	switch r.Method {
	case http.MethodGet:
		user, pass, hasCreds = r.BasicAuth()
		rec.Service = r.URL.Query().Get("service")
		rec.Scopes = splitScopes(r.URL.Query()["scope"])
	case http.MethodPost:
		// OAuth2 password grant (containerd's first try with credentials).
		if err := r.ParseForm(); err != nil {
			fail(http.StatusBadRequest, "bad form")
			return
		}
		if gt := r.PostForm.Get("grant_type"); gt != "password" {
			fail(http.StatusBadRequest, "unsupported grant_type "+gt)
			return
		}
		user, pass = r.PostForm.Get("username"), r.PostForm.Get("password")
		hasCreds = user != ""
		rec.Service = r.PostForm.Get("service")
		rec.Scopes = splitScopes(r.PostForm["scope"])
	default:
		fail(http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if rec.Service != s.opts.Service {
		fail(http.StatusBadRequest, "unknown service")
		return
	}

	s.mu.Lock()
	anonymous, delay := s.anonymous, s.delay
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			fail(http.StatusServiceUnavailable, "client went away")
			return
		}
	}
	if hasCreds {
		want, known := s.opts.Users[user]
		if !known || subtle.ConstantTimeCompare([]byte(want), []byte(pass)) != 1 {
			fail(http.StatusUnauthorized, "invalid username or password")
			return
		}
		rec.User = user
	} else if anonymous == AnonymousRefuse {
		fail(http.StatusUnauthorized, "authentication required")
		return
	}

	for _, sc := range rec.Scopes {
		typ, name, actions, ok := parseScope(sc)
		if !ok || typ != "repository" {
			continue
		}
		var granted []string
		switch {
		case rec.User != "" && s.opts.Grant != nil:
			granted = s.opts.Grant(rec.User, name, actions)
		case rec.User != "":
			granted = actions
		case anonymous == AnonymousPull && slices.Contains(actions, "pull"):
			granted = []string{"pull"}
		}
		if len(granted) > 0 {
			rec.Granted = append(rec.Granted, Access{Type: typ, Name: name, Actions: granted})
		}
	}

	now := time.Now()
	tok, err := s.sign(rec.User, rec.Granted, now)
	if err != nil {
		fail(http.StatusInternalServerError, "signing failed")
		return
	}
	rec.Status = http.StatusOK
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(tokenResponse{
		Token: tok, AccessToken: tok,
		ExpiresIn: int(s.opts.Lifetime / time.Second),
		IssuedAt:  now.UTC().Format(time.RFC3339),
	})
}

// splitScopes accepts repeated scope parameters and space-separated ones.
func splitScopes(vals []string) []string {
	var out []string
	for _, v := range vals {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// parseScope splits "repository:NAME:ACTION,ACTION" (NAME may hold a
// port's colon, so the actions are after the last colon).
func parseScope(sc string) (typ, name string, actions []string, ok bool) {
	typ, rest, ok1 := strings.Cut(sc, ":")
	i := strings.LastIndex(rest, ":")
	if !ok1 || i <= 0 {
		return "", "", nil, false
	}
	name = rest[:i]
	for _, a := range strings.Split(rest[i+1:], ",") {
		if a != "" {
			actions = append(actions, a)
		}
	}
	return typ, name, actions, true
}

// sign builds the JWT distribution 2.8 verifies.
func (s *Server) sign(subject string, access []Access, now time.Time) (string, error) {
	if access == nil {
		access = []Access{}
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	header := map[string]any{
		"typ": "JWT",
		"alg": "ES256",
		"x5c": []string{base64.StdEncoding.EncodeToString(s.cert.Raw)},
	}
	claims := map[string]any{
		"iss":    s.opts.Issuer,
		"sub":    subject,
		"aud":    s.opts.Service, // a string: distribution 2.8's ClaimSet.Audience
		"exp":    now.Add(s.opts.Lifetime).Unix(),
		"nbf":    now.Add(-time.Second).Unix(),
		"iat":    now.Unix(),
		"jti":    hex.EncodeToString(jti),
		"access": access,
	}
	hb, err := json.Marshal(header)
	if err != nil {
		return "", err
	}
	cb, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signingInput := enc.EncodeToString(hb) + "." + enc.EncodeToString(cb)
	sum := sha256.Sum256([]byte(signingInput))
	r, sig, err := ecdsa.Sign(rand.Reader, s.key, sum[:])
	if err != nil {
		return "", err
	}
	// JWS ES256: the 64-byte concatenation of r and s, each left-padded to 32 bytes.
	raw := make([]byte, 64)
	r.FillBytes(raw[:32])
	sig.FillBytes(raw[32:])
	return signingInput + "." + enc.EncodeToString(raw), nil
}

// selfSigned makes a self-signed P-256 certificate: for token signing, or
// (server) for TLS on 127.0.0.1, ::1 and localhost.
func selfSigned(cn string, server bool) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	cert, key, err := certs.CA(cn, func(tmpl *x509.Certificate) {
		if server {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
			tmpl.DNSNames = []string{"localhost"}
		}
	})
	return key, cert, err
}
