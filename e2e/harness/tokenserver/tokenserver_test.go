package tokenserver

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

// verify checks a token the way distribution 2.8 does: x5c leaf chained to
// the rootcertbundle, ES256 over header.payload, iss/aud/exp/nbf. It
// returns the claims.
func verify(t *testing.T, s *Server, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	dec := func(p string) []byte {
		b, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil {
			t.Fatalf("base64url: %v", err)
		}
		return b
	}
	var hdr struct {
		Typ, Alg string
		X5c      []string
	}
	if err := json.Unmarshal(dec(parts[0]), &hdr); err != nil {
		t.Fatal(err)
	}
	if hdr.Alg != "ES256" || hdr.Typ != "JWT" || len(hdr.X5c) != 1 {
		t.Fatalf("header %+v", hdr)
	}
	der, err := base64.StdEncoding.DecodeString(hdr.X5c[0])
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(s.CertFile())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		t.Fatal("rootcertbundle has no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("x5c does not chain to the rootcertbundle: %v", err)
	}
	sig := dec(parts[2])
	if len(sig) != 64 {
		t.Fatalf("signature is %d bytes, want 64 (r||s)", len(sig))
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, ss := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(leaf.PublicKey.(*ecdsa.PublicKey), sum[:], r, ss) {
		t.Fatal("signature does not verify")
	}
	var claims map[string]any
	if err := json.Unmarshal(dec(parts[1]), &claims); err != nil {
		t.Fatal(err)
	}
	now := float64(time.Now().Unix())
	if claims["iss"] != s.Issuer() || claims["aud"] != s.Service() ||
		claims["exp"].(float64) <= now || claims["nbf"].(float64) > now || claims["jti"] == "" {
		t.Fatalf("claims %v", claims)
	}
	return claims
}

func get(t *testing.T, s *Server, user, pass string, scopes ...string) (int, tokenResponse) {
	t.Helper()
	q := url.Values{"service": {s.Service()}, "scope": scopes}
	req, _ := http.NewRequest(http.MethodGet, s.Realm()+"?"+q.Encode(), nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	req.Header.Set("User-Agent", "unit")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr tokenResponse
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, tr
}

// access re-encodes the access claim in Access's field order.
func access(claims map[string]any) string {
	b, _ := json.Marshal(claims["access"])
	var a []Access
	_ = json.Unmarshal(b, &a)
	if a == nil {
		a = []Access{}
	}
	b, _ = json.Marshal(a)
	return string(b)
}

func TestTokens(t *testing.T) {
	s, err := Start(t.TempDir(), Options{Users: map[string]string{"alice": "pw"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	scope := "repository:team/app:pull,push"

	cases := []struct {
		name       string
		anon       Anonymous
		user, pass string
		wantCode   int
		wantAccess string
	}{
		{"anonymous pull", AnonymousPull, "", "", 200, `[{"type":"repository","name":"team/app","actions":["pull"]}]`},
		{"anonymous no access", AnonymousNoAccess, "", "", 200, `[]`},
		{"anonymous refused", AnonymousRefuse, "", "", 401, ""},
		{"user", AnonymousRefuse, "alice", "pw", 200, `[{"type":"repository","name":"team/app","actions":["pull","push"]}]`},
		{"wrong password", AnonymousPull, "alice", "nope", 401, ""},
		{"unknown user", AnonymousPull, "bob", "pw", 401, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.SetAnonymous(c.anon)
			code, tr := get(t, s, c.user, c.pass, scope)
			if code != c.wantCode {
				t.Fatalf("status %d, want %d", code, c.wantCode)
			}
			if code != 200 {
				return
			}
			if tr.Token == "" || tr.Token != tr.AccessToken || tr.ExpiresIn != 300 || tr.IssuedAt == "" {
				t.Fatalf("response %+v", tr)
			}
			claims := verify(t, s, tr.Token)
			if got := access(claims); got != c.wantAccess {
				t.Errorf("access %s, want %s", got, c.wantAccess)
			}
			if claims["sub"] != c.user {
				t.Errorf("sub %v, want %q", claims["sub"], c.user)
			}
		})
	}
	if n := s.Count(nil); n != len(cases) {
		t.Errorf("Count = %d, want %d", n, len(cases))
	}
	for _, r := range s.Requests() {
		if r.UserAgent != "unit" || len(r.Scopes) != 1 || r.Scopes[0] != scope {
			t.Errorf("request record %+v", r)
		}
	}
}

func TestOAuthPostAndTLS(t *testing.T) {
	s, err := Start(t.TempDir(), Options{Users: map[string]string{"alice": "pw"}, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pemBytes, err := os.ReadFile(s.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig.RootCAs = pool
	client := &http.Client{Transport: tr}
	form := url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"pw"},
		"service": {s.Service()}, "scope": {"repository:a/b:pull"}, "client_id": {"containerd-client"}}
	resp, err := client.PostForm(s.Realm(), form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out tokenResponse
	if resp.StatusCode != 200 {
		t.Fatalf("POST: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if got := access(verify(t, s, out.AccessToken)); got != `[{"type":"repository","name":"a/b","actions":["pull"]}]` {
		t.Errorf("access %s", got)
	}
}

func TestParseScope(t *testing.T) {
	typ, name, actions, ok := parseScope("repository:127.0.0.1:5000/x:pull")
	if !ok || typ != "repository" || name != "127.0.0.1:5000/x" || len(actions) != 1 || actions[0] != "pull" {
		t.Errorf("got %q %q %q %v", typ, name, actions, ok)
	}
	if _, _, _, ok := parseScope("garbage"); ok {
		t.Error("garbage parsed")
	}
}
