package probe

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
	remoteserrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"golang.org/x/sync/singleflight"

	"github.com/pullwatch/pullwatch/agent/pkg/credentials"
	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

type scheme int

const (
	schemeNone scheme = iota
	schemeBasic
	schemeBearer
)

// challenge is what a registry's /v2/ asked for.
type challenge struct {
	scheme  scheme
	realm   string
	service string
}

// pingTTL is how long a /v2/ answer is reused: one round's worth of images
// on the same endpoint share one ping.
const pingTTL = 30 * time.Second

type pingCache struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]pingEntry
}

type pingEntry struct {
	ch      challenge
	expires time.Time
}

func newPingCache(now func() time.Time) *pingCache {
	return &pingCache{now: now, m: map[string]pingEntry{}}
}

// ping asks GET /v2/ which authentication the endpoint wants. Only
// successful answers are cached.
func (p *Prober) ping(ctx context.Context, t target) (challenge, error) {
	key := t.base.String()
	p.pings.mu.Lock()
	e, ok := p.pings.m[key]
	p.pings.mu.Unlock()
	if ok && p.opts.Now().Before(e.expires) {
		return e.ch, nil
	}
	req, err := p.newRequest(ctx, http.MethodGet, strings.TrimSuffix(t.base.String(), "/")+"/", t)
	if err != nil {
		return challenge{}, err
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return challenge{}, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	var ch challenge
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusUnauthorized:
		ch = parseChallenge(resp.Header)
		if ch.scheme == schemeNone {
			return challenge{}, &statusError{pb.ImageStatus_IMAGE_STATUS_UNKNOWN, resp.StatusCode, "registry answered /v2/ with 401 but no WWW-Authenticate challenge pullwatch understands"}
		}
	case resp.StatusCode == http.StatusTooManyRequests:
		return challenge{}, &statusError{pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED, resp.StatusCode, "registry rate limit reached (429 Too Many Requests on /v2/)"}
	case resp.StatusCode >= 500:
		return challenge{}, &statusError{pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, resp.StatusCode, fmt.Sprintf("registry answered %s on /v2/", resp.Status)}
	default:
		// Any other answer (403 from a gateway that wants a header, 404
		// from a proxy that serves only repository paths): the runtime
		// never asks /v2/ before a pull (containerd's resolver goes
		// straight to the manifest), so neither does its verdict depend
		// on it. No challenge; the manifest's answer decides.
	}
	p.pings.mu.Lock()
	p.pings.m[key] = pingEntry{ch: ch, expires: p.opts.Now().Add(pingTTL)}
	p.pings.mu.Unlock()
	return ch, nil
}

// parseChallenge picks the strongest challenge the registry offers, using
// containerd's own WWW-Authenticate parser.
func parseChallenge(h http.Header) challenge {
	for _, c := range auth.ParseAuthHeader(h) {
		switch c.Scheme {
		case auth.BearerAuth:
			if c.Parameters["realm"] != "" {
				return challenge{scheme: schemeBearer, realm: c.Parameters["realm"], service: c.Parameters["service"]}
			}
		case auth.BasicAuth:
			return challenge{scheme: schemeBasic}
		}
	}
	return challenge{}
}

// authorize returns the Authorization header value for a manifest request
// to the endpoint t (of ref's registry), and, when it withheld the
// credential, why.
//
// Credentials go only where the runtime would send them: the node's
// credentials are for the image's registry, so basic credentials never go
// over plain HTTP to another host (a mirror, a token realm) than the
// registry's own; they go over HTTPS, or to the registry itself. A token
// realm on the loopback network, a link-local address (the cloud metadata
// service) or this node's own address is refused unless the registry
// itself is there: the agent runs on the host network, and a registry must
// not make it fetch, and report, what only the node can reach.
func (p *Prober) authorize(ctx context.Context, ch challenge, t target, ref imageref.Ref, ep hosts.Endpoint, cred credentials.Credential) (authz, withheld string, err error) {
	switch ch.scheme {
	case schemeBasic:
		if cred.Secret == "" {
			return "", "", nil // the HEAD's 401 says unauthorized
		}
		if why := withholdFrom(t.base, ref, ep, t.base); why != "" {
			return "", why, nil
		}
		req := http.Request{Header: http.Header{}}
		req.SetBasicAuth(cred.Username, cred.Secret)
		return req.Header.Get("Authorization"), "", nil
	case schemeBearer:
		realm, err := p.checkRealm(ch.realm, t.base)
		if err != nil {
			return "", "", err
		}
		if cred.Secret != "" {
			if withheld = withholdFrom(realm, ref, ep, t.base); withheld != "" {
				cred = credentials.Credential{Source: cred.Source} // an anonymous token
			}
		}
		tok, err := p.tokens.get(ctx, t.client, ch, t.repo, cred, p.opts.UserAgent)
		if err != nil {
			return "", withheld, err
		}
		return "Bearer " + tok, withheld, nil
	default:
		return "", "", nil
	}
}

// withholdFrom says why the node's credentials for ref's registry are not
// sent to u ("" when they are): plain HTTP to another host than the
// registry's — its name, its API host, or the upstream endpoint's host
// that the runtime's configuration gives it (base) — ports aside. Plain
// HTTP that stays on the loopback network, from a registry there, never
// leaves the node and is the registry's own.
func withholdFrom(u *url.URL, ref imageref.Ref, ep hosts.Endpoint, base *url.URL) string {
	if u.Scheme == "https" {
		return ""
	}
	host := u.Hostname()
	api, _ := imageref.APIHost(ref.Registry())
	for _, own := range []string{ref.Registry(), api} {
		if strings.EqualFold(host, hostname(own)) {
			return ""
		}
	}
	if ep.Role == hosts.RoleUpstream && strings.EqualFold(host, base.Hostname()) {
		return ""
	}
	if hosts.IsLocalhost(host) && hosts.IsLocalhost(base.Hostname()) {
		return ""
	}
	return fmt.Sprintf("the node's credentials for %s are not sent over plain HTTP to another host (%s)", ref.Registry(), u.Host)
}

// hostname is host:port without the port.
func hostname(hostport string) string {
	return (&url.URL{Host: hostport}).Hostname()
}

// checkRealm parses a bearer challenge's realm and refuses one the agent
// must not fetch (see authorize).
func (p *Prober) checkRealm(realm string, registry *url.URL) (*url.URL, error) {
	u, err := url.Parse(realm)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, &statusError{pb.ImageStatus_IMAGE_STATUS_UNKNOWN, 0, fmt.Sprintf("registry's token realm %q is not an http(s) URL", realm)}
	}
	where := p.nodeLocal(u.Hostname())
	if where == "" || p.nodeLocal(registry.Hostname()) != "" {
		return u, nil
	}
	u.User = nil
	return nil, &statusError{pb.ImageStatus_IMAGE_STATUS_UNKNOWN, 0, fmt.Sprintf("token realm %s refused: it is on %s and the registry is not (the agent runs on the node's network and does not fetch such realms for a registry)", u.Redacted(), where)}
}

// nodeLocal says which of the node's own networks host (a name or an IP
// literal) is on: loopback, link-local, unspecified, or one of the node's
// own addresses; "" for none. Names other than localhost are not resolved.
func (p *Prober) nodeLocal(host string) string {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return "the loopback network"
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return ""
	case ip.IsLoopback():
		return "the loopback network"
	case ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast():
		return "a link-local address"
	case ip.IsUnspecified():
		return "the unspecified address"
	}
	p.nodeIPsOnce.Do(func() {
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				p.nodeIPs = append(p.nodeIPs, n.IP)
			}
		}
	})
	for _, own := range p.nodeIPs {
		if own.Equal(ip) {
			return "this node's own address"
		}
	}
	return ""
}

// tokenCache keeps bearer tokens per realm, service, scope and credential
// until they expire.
type tokenCache struct {
	now    func() time.Time
	mu     sync.Mutex
	m      map[string]cachedToken
	flight singleflight.Group // one token request per key at a time
}

type cachedToken struct {
	token   string
	expires time.Time
}

// tokenTimeout bounds a token request made without a deadline.
const tokenTimeout = 30 * time.Second

// Tokens without expires_in are valid for 60 seconds (distribution's token spec).
const defaultTokenLifetime = 60 * time.Second

func newTokenCache(now func() time.Time) *tokenCache {
	return &tokenCache{now: now, m: map[string]cachedToken{}}
}

func scope(repo string) string { return "repository:" + repo + ":pull" }

// tokenKey identifies a token; the credential enters only as a hash, so the
// cache never holds a secret in its keys.
func tokenKey(ch challenge, repo string, cred credentials.Credential) string {
	h := sha256.Sum256([]byte(cred.Username + "\x00" + cred.Secret))
	return ch.realm + "|" + ch.service + "|" + scope(repo) + "|" + hex.EncodeToString(h[:8])
}

func (c *tokenCache) forget(ch challenge, repo string, cred credentials.Credential) {
	c.mu.Lock()
	delete(c.m, tokenKey(ch, repo, cred))
	c.mu.Unlock()
}

func (c *tokenCache) get(ctx context.Context, client *http.Client, ch challenge, repo string, cred credentials.Credential, ua string) (string, error) {
	key := tokenKey(ch, repo, cred)
	c.mu.Lock()
	t, ok := c.m[key]
	c.mu.Unlock()
	if ok && c.now().Before(t.expires) {
		return t.token, nil
	}
	// Concurrent probes of one repository share one token request. It
	// runs on its own deadline, so one caller giving up does not fail the
	// others that wait on it.
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(tokenTimeout)
	}
	v, err, _ := c.flight.Do(key, func() (any, error) {
		fctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		defer cancel()
		return auth.FetchToken(fctx, client, http.Header{"User-Agent": {ua}}, auth.TokenOptions{
			Realm:    ch.realm,
			Service:  ch.service,
			Scopes:   []string{scope(repo)},
			Username: cred.Username,
			Secret:   cred.Secret,
		})
	})
	if err != nil {
		return "", tokenError(err, ch.realm)
	}
	resp := v.(*auth.FetchTokenResponse)
	life := time.Duration(resp.ExpiresInSeconds) * time.Second
	if life <= 0 {
		life = defaultTokenLifetime
	}
	issued := resp.IssuedAt
	if issued.IsZero() || issued.After(c.now()) {
		issued = c.now()
	}
	// Renew a little early so a token does not expire mid-probe.
	expires := issued.Add(life - life/10)
	c.mu.Lock()
	c.m[key] = cachedToken{token: resp.Token, expires: expires}
	c.mu.Unlock()
	return resp.Token, nil
}

// tokenError classifies a token server failure; its message names the
// realm (a URL without credentials), never the credential.
func tokenError(err error, realm string) error {
	var us remoteserrors.ErrUnexpectedStatus
	if errors.As(err, &us) {
		switch {
		case us.StatusCode == http.StatusUnauthorized:
			return &statusError{pb.ImageStatus_IMAGE_STATUS_UNAUTHORIZED, us.StatusCode, "token server " + realm + " refused the credentials (401 Unauthorized)"}
		case us.StatusCode == http.StatusForbidden:
			return &statusError{pb.ImageStatus_IMAGE_STATUS_FORBIDDEN, us.StatusCode, "token server " + realm + " denied access (403 Forbidden)"}
		case us.StatusCode == http.StatusTooManyRequests:
			return &statusError{pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED, us.StatusCode, "token server " + realm + " rate limit reached (429)"}
		case us.StatusCode >= 500:
			return &statusError{pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, us.StatusCode, "token server " + realm + " answered " + us.Status}
		default:
			return &statusError{pb.ImageStatus_IMAGE_STATUS_UNKNOWN, us.StatusCode, "token server " + realm + " answered " + us.Status}
		}
	}
	if errors.Is(err, auth.ErrNoToken) {
		return &statusError{pb.ImageStatus_IMAGE_STATUS_UNKNOWN, 0, "token server " + realm + " sent no token"}
	}
	if errors.Is(err, errBodyTooLarge) {
		return &statusError{pb.ImageStatus_IMAGE_STATUS_UNKNOWN, 0, "token server " + realm + " sent a response over 1 MiB"}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("token server %s: %w", realm, ue.Err)
	}
	// An answer that is not a token response: the server is broken or hostile.
	return &statusError{pb.ImageStatus_IMAGE_STATUS_UNKNOWN, 0, "token server " + realm + ": " + err.Error()}
}

var errBodyTooLarge = errors.New("response body over 1 MiB")

// limitedBody fails reads past its limit instead of truncating silently.
type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errBodyTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
