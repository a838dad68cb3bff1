// Package probe asks a registry, the way a container runtime would, whether
// an image's manifest can be pulled: a /v2/ ping, the bearer-token flow when
// the registry asks for it, and a HEAD of the manifest, which does not count
// against pull rate limits. It never GETs a blob; the one manifest GET is
// the platform check (platform.go): an index a moved tag now points at,
// once per index digest.
package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullwatch/pullwatch/agent/pkg/credentials"
	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/agent/pkg/netpath"
	"github.com/pullwatch/pullwatch/agent/pkg/report"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Media types a runtime accepts for a manifest, in the Accept header
// containerd sends.
var manifestMediaTypes = []string{
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
}

var acceptHeader = strings.Join(append(append([]string(nil), manifestMediaTypes...), "*/*"), ", ")

// Options configure a Prober.
type Options struct {
	// Timeout bounds one endpoint's probe (ping, token, HEAD). Default 10s.
	Timeout time.Duration
	// PerHostConcurrency bounds probes in flight per registry endpoint host. Default 4.
	PerHostConcurrency int
	// Transport overrides the HTTP transport (tests, TLS and proxy settings).
	Transport http.RoundTripper
	// UserAgent sent with every request.
	UserAgent string
	// Now defaults to time.Now.
	Now func() time.Time
	// Platform is the node's (default: this process's, with the CPU
	// variant, as containerd detects it).
	Platform *ocispec.Platform
	// FirstFailure makes the image's failure the first endpoint's failure
	// that is not a 404 (404 only when every endpoint answered it), as
	// containerd 1.x reports; off, failures are ranked as 2.x ranks them
	// (see mostRelevantFailure). Set from the runtime's version
	// (RanksFailuresInOrder).
	FirstFailure bool
}

// RanksFailuresInOrder reports whether the runtime, by its name and
// version as CRI reports them, reports the first endpoint's failure that
// is not a 404 (containerd 1.x) rather than ranking failures (2.x).
func RanksFailuresInOrder(runtimeName, version string) bool {
	if runtimeName != "containerd" {
		return false
	}
	var major int
	if _, err := fmt.Sscanf(strings.TrimPrefix(version, "v"), "%d.", &major); err != nil {
		return false
	}
	return major < 2
}

// answer is one endpoint's answer: the report's account of it, and what
// the prober needs besides to pick the image's answer and check its index.
type answer struct {
	report.Endpoint
	ep hosts.Endpoint
	// digest and mediaType the endpoint serves for the reference
	// (Docker-Content-Digest, Content-Type).
	digest, mediaType string
	// credentialSource is the source of the credential the answer was got
	// with, credential its index in the request's credentials.
	credentialSource string
	credential       int
	// terminal: the runtime stops at this answer and asks no later
	// endpoint (a malformed digest header, an endpoint that accepted the
	// request and never answered).
	terminal bool
}

// Result is an image's answer: what the runtime would get. Its Outcome is
// what the node's report shows (Drifted is the caller's: it compares the
// node's digest with Digest).
type Result struct {
	report.Outcome
	// Digest and media type the winning endpoint serves.
	Digest    string
	MediaType string
}

// Prober probes registries. It is safe for concurrent use.
type Prober struct {
	client  *http.Client
	opts    Options
	tokens  *tokenCache
	pings   *pingCache
	indexes *indexCache
	limitMu sync.Mutex
	limits  map[string]chan struct{}
	backoff map[string]time.Time // endpoint host → no requests before

	nodeIPsOnce sync.Once
	nodeIPs     []net.IP // this node's own addresses, for token realms
}

// maxBodyBytes bounds what the prober reads of any response: a registry or
// token server that answers with an endless body cannot grow our memory.
const maxBodyBytes = 1 << 20

// New builds a Prober.
func New(opts Options) *Prober {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.PerHostConcurrency <= 0 {
		opts.PerHostConcurrency = 4
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Platform == nil {
		def := platforms.DefaultSpec()
		opts.Platform = &def
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "pullwatch-agent"
	}
	rt := opts.Transport
	if rt == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil // the runtime's proxy settings, not the agent's environment, apply; see hosts
		t.MaxIdleConnsPerHost = opts.PerHostConcurrency
		netpath.Bound(t, opts.Timeout)
		rt = t
	}
	return &Prober{
		client: &http.Client{
			Transport: limitedBodies{rt},
			// Registries redirect to storage; a HEAD follows like the runtime does.
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 10 {
					return errors.New("stopped after 10 redirects")
				}
				return nil
			},
		},
		opts:    opts,
		tokens:  newTokenCache(opts.Now),
		pings:   newPingCache(opts.Now),
		indexes: newIndexCache(),
		limits:  map[string]chan struct{}{},
		backoff: map[string]time.Time{},
	}
}

// Request is one image to probe.
type Request struct {
	Ref imageref.Ref
	// Endpoints in the runtime's order.
	Endpoints []hosts.Endpoint
	// Credentials in the kubelet's order; none means anonymous.
	Credentials []credentials.Credential
	// NodeDigest is the manifest digest the node has for Ref, "" if unknown.
	NodeDigest string
	// Round is what the probes of this round share (slots, breakers);
	// nil is none.
	Round *Round
}

// Probe asks every endpoint, in order, for the reference's manifest, with
// each credential in turn (anonymous when there are none), as the runtime
// would. The image's status is the first endpoint that has it; when none
// has it, the last endpoint's answer (the upstream, which is what the
// runtime reports). When the tag now points at an index the node has not
// pulled, the index must list the node's platform (platform_missing).
func (p *Prober) Probe(ctx context.Context, req Request) Result {
	ref, endpoints, creds := req.Ref, req.Endpoints, req.Credentials
	checked := p.opts.Now()
	res := Result{Outcome: report.Outcome{CheckedAt: &checked}}
	if len(creds) == 0 {
		creds = []credentials.Credential{{Source: credentials.SourceAnonymous}}
	}
	if len(endpoints) == 0 {
		res.Status = pb.ImageStatus_IMAGE_STATUS_UNKNOWN
		res.Reason = "no registry endpoint configured for " + ref.Registry()
		return res
	}
	answers := make([]answer, 0, len(endpoints))
	winner, lastAsked := -1, -1
	// listed counts each URL's entries so far: a URL listed twice (a
	// hosts.toml whose [host."URL"] and server = "URL" name the same
	// registry, the first with its ca, the second without, as containerd
	// lists them) is two endpoints with their own TLS, and their own
	// breakers: the second's x509 failure must not trip the first's.
	listed := map[string]int{}
	stopped := -1 // the terminal answer the runtime would stop at
	for i, ep := range endpoints {
		var a answer
		switch {
		case stopped >= 0:
			a = answer{Endpoint: endpointReport(ep, p.opts.Now()), ep: ep}
			a.Status, a.Reason, a.Skipped = pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "not asked: the runtime stops at "+answers[stopped].URL, true
		case ep.Skip != "":
			a = answer{Endpoint: endpointReport(ep, p.opts.Now()), ep: ep}
			a.Status, a.Reason, a.Skipped = pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "not asked: "+ep.Skip, true
		default:
			listed[ep.URL]++
			a = p.probeWithCredentials(ctx, req.Round, ref, ep, listed[ep.URL], creds)
			lastAsked = i
			if a.terminal && winner < 0 {
				stopped = i
			}
		}
		answers = append(answers, a)
		res.Endpoints = append(res.Endpoints, a.Endpoint)
		if winner < 0 && a.Status == pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
			winner = i
		}
	}
	switch {
	case winner >= 0:
		p.won(ctx, &res, req, answers, winner, creds)
	case lastAsked < 0:
		res.Status, res.Reason = pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "the runtime would ask no endpoint for this reference: "+endpoints[0].Skip
	default:
		pick := stopped
		if pick < 0 {
			pick = mostRelevantFailure(answers, p.opts.FirstFailure)
		}
		failed := answers[pick]
		res.Status, res.Reason, res.CredentialSource = failed.Status, failed.Reason, failed.credentialSource
		if len(endpoints) > 1 {
			res.Reason = failed.URL + ": " + failed.Reason
		}
	}
	return res
}

// won sets the image's answer from the winning endpoint's, and checks the
// index it serves for the node's platform when the node has not pulled it.
func (p *Prober) won(ctx context.Context, res *Result, req Request, answers []answer, winner int, creds []credentials.Credential) {
	w := answers[winner]
	res.Status, res.Digest, res.MediaType, res.CredentialSource = w.Status, w.digest, w.mediaType, w.credentialSource
	res.Reason = "manifest found at " + w.URL
	// Degraded: available, but an endpoint the runtime would use for
	// this image failed — before the winner (the pull needs the
	// fallback) or after it (one failure more and the pull fails).
	for i, other := range answers {
		if i != winner && !other.Skipped && other.Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
			res.Degraded = true
			res.Reason += fmt.Sprintf("; %s failed: %s", other.URL, other.Reason)
			break
		}
	}
	if isIndex(w.mediaType) && req.Ref.Digest() == "" && w.digest != "" && w.digest != req.NodeDigest {
		p.checkPlatform(ctx, res, req.Ref, w, creds[w.credential])
	}
}

// endpointReport starts the report's account of an endpoint's answer.
func endpointReport(ep hosts.Endpoint, checked time.Time) report.Endpoint {
	return report.Endpoint{URL: ep.URL, Role: ep.Role, CheckedAt: checked}
}

// mostRelevantFailure picks the error the runtime reports when no endpoint
// has the image, as containerd 2.x ranks them: an HTTP error other than
// 404 (it says what to fix: credentials, rate limits) over a 404 over a
// transport error; the first in host order among equals. With
// firstFailure, as containerd 1.x: the first failure that is not a 404,
// whatever its kind, else the 404 (seen on 1.6 and 1.7: a deleted tag
// behind a [host] table with its CA that falls through to the server entry
// without it fails with the server entry's x509 error). A rate_limited
// answer without an HTTP status (backing off after a 429) counts as the
// 429 it stands for.
func mostRelevantFailure(answers []answer, firstFailure bool) int {
	rank := func(a answer) int {
		switch {
		case a.Skipped:
			return -1
		case a.Status == pb.ImageStatus_IMAGE_STATUS_ABSENT:
			return 1
		case firstFailure:
			return 2
		case pb.Answered(a.Status, a.HTTPStatus):
			return 2
		default:
			return 0
		}
	}
	best := -1
	for i, a := range answers {
		if best < 0 || rank(a) > rank(answers[best]) {
			best = i
		}
	}
	return best
}

// probeWithCredentials tries each credential until the endpoint accepts
// one, as the kubelet tries each matching credential in turn.
// nth is which entry of its URL ep is in the image's endpoints (1: the
// first).
func (p *Prober) probeWithCredentials(ctx context.Context, round *Round, ref imageref.Ref, ep hosts.Endpoint, nth int, creds []credentials.Credential) answer {
	var a answer
	for i, cred := range creds {
		if cred.Source == credentials.SourceAnonymous && ep.RuntimeAuth != nil {
			// The kubelet hands the runtime no credentials: the runtime
			// sends its own configuration's for this host.
			user, secret, err := ep.RuntimeAuth.UserSecret()
			if err != nil {
				a = answer{Endpoint: endpointReport(ep, p.opts.Now()), ep: ep}
				a.Status, a.Reason = pb.ImageStatus_IMAGE_STATUS_UNKNOWN, err.Error()
				return a
			}
			cred = credentials.Credential{Username: user, Secret: secret, Source: credentials.SourceRuntimeConfig}
		}
		a = p.probeEndpoint(ctx, round, ref, ep, nth, cred)
		a.credentialSource, a.credential = cred.Source, i
		if a.Status != pb.ImageStatus_IMAGE_STATUS_UNAUTHORIZED && a.Status != pb.ImageStatus_IMAGE_STATUS_FORBIDDEN {
			break
		}
	}
	return a
}

// target is one endpoint as a request goes to it.
type target struct {
	base   *url.URL // API base, e.g. http://127.0.0.1:5000/v2
	repo   string   // repository path at this endpoint
	client *http.Client
	header http.Header
}

func (p *Prober) target(ep hosts.Endpoint, ref imageref.Ref) (target, error) {
	base, err := url.Parse(ep.URL)
	if err != nil || base.Host == "" || (base.Scheme != "http" && base.Scheme != "https") {
		return target{}, fmt.Errorf("endpoint URL %q is not an http(s) URL", ep.URL)
	}
	t := target{base: base, repo: ref.Repository(), client: p.client, header: ep.Header}
	if ep.Repository != "" {
		t.repo = ep.Repository
	}
	if ep.Client != nil {
		c := *ep.Client
		c.Transport = limitedBodies{transportOf(ep.Client)}
		c.CheckRedirect = p.client.CheckRedirect
		t.client = &c
	}
	return t, nil
}

func transportOf(c *http.Client) http.RoundTripper {
	if c.Transport != nil {
		return c.Transport
	}
	return http.DefaultTransport
}

// newRequest builds a request to t with the endpoint's headers.
func (p *Prober) newRequest(ctx context.Context, method, u string, t target) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range t.header {
		req.Header[k] = append([]string(nil), v...)
	}
	req.Header.Set("User-Agent", p.opts.UserAgent)
	return req, nil
}

// breakerKey is the key of an endpoint's breaker in a Round: the endpoint,
// and which entry of its URL it is (nth, from 1).
func breakerKey(t target, nth int) string {
	if nth > 1 {
		return t.base.String() + "#" + strconv.Itoa(nth)
	}
	return t.base.String()
}

func (p *Prober) probeEndpoint(ctx context.Context, round *Round, ref imageref.Ref, ep hosts.Endpoint, nth int, cred credentials.Credential) (er answer) {
	start := p.opts.Now()
	er = answer{Endpoint: endpointReport(ep, start), ep: ep}
	t, err := p.target(ep, ref)
	if err != nil {
		er.Status, er.Reason = pb.ImageStatus_IMAGE_STATUS_UNKNOWN, err.Error()
		return er
	}
	if until, ok := p.backingOff(t.base.Host); ok {
		er.Status = pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED
		er.Reason = fmt.Sprintf("not asked: backing off until %s after the registry answered 429", until.UTC().Format(time.RFC3339))
		return er
	}
	key := breakerKey(t, nth)
	// An endpoint whose breaker is open answers with its first failure,
	// word for word (so the report of an image does not change from one
	// round to the next with which image happened to be the canary), and
	// with that failure's latency.
	down := func() answer {
		f, _ := round.failed(key)
		er.Status, er.Reason, er.HTTPStatus, er.LatencySeconds, er.terminal = f.status, f.reason, f.code, f.latency, f.terminal
		return er
	}
	if _, ok := round.failed(key); ok {
		return down()
	}
	canary, answered, tripped := round.canary(key)
	if canary {
		// Whatever the canary's end, the probes waiting for it go on
		// (a tripped breaker has told them already).
		defer round.answered(key)
	} else {
		select {
		case <-answered:
		case <-tripped:
			return down()
		case <-ctx.Done():
			return p.notProbed(ctx, er, ctx.Err(), down)
		}
	}
	// The host's slot first, then the round's (the canary takes none): a
	// probe queued behind a hung host holds none of the slots healthy
	// registries need.
	release, err := p.acquire(ctx, t.base.Host, round.tripped(key))
	if err != nil {
		return p.notProbed(ctx, er, err, down)
	}
	defer release()
	if !canary {
		releaseRound, err := round.acquire(ctx, round.tripped(key))
		if err != nil {
			return p.notProbed(ctx, er, err, down)
		}
		defer releaseRound()
	}
	if _, ok := round.failed(key); ok {
		return down()
	}

	pctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	// wrote: a request went out on an open connection. Timing out after
	// that is an endpoint that accepted the request and never answered:
	// containerd's client has no deadline of its own there, so the runtime
	// waits on it and never asks the next endpoint (a refused or
	// unreachable one it skips; a dial or TLS handshake has its timeout).
	var wrote atomic.Bool
	pctx = httptrace.WithClientTrace(pctx, &httptrace.ClientTrace{
		GetConn:      func(string) { wrote.Store(false) }, // each request anew
		WroteRequest: func(httptrace.WroteRequestInfo) { wrote.Store(true) },
	})
	defer func() { er.LatencySeconds = p.opts.Now().Sub(start).Seconds() }()
	fail := func(err error) answer {
		er.Status, er.Reason, er.HTTPStatus = p.classify(ctx, pctx, err)
		if ctx.Err() == nil && isTimeout(pctx, err) && wrote.Load() && er.HTTPStatus == 0 {
			er.terminal = true
			er.Reason = fmt.Sprintf("timeout after %s: the endpoint accepted the request and never answered; the runtime waits on it with no deadline of its own and asks no later endpoint, until the kubelet's runtime-request-timeout (2m by default) ends the pull", p.opts.Timeout)
		}
		return er
	}

	ch, err := p.ping(pctx, t)
	if err != nil {
		fail(err)
		if ctx.Err() == nil {
			// A failed ping is this endpoint's answer for the rest of the
			// round: the next probe would ask again and wait again.
			round.trip(key, failure{er.Status, er.Reason, er.HTTPStatus, p.opts.Now().Sub(start).Seconds(), er.terminal})
		}
		return er
	}
	authz, withheld, err := p.authorize(pctx, ch, t, ref, ep, cred)
	if err != nil {
		fail(err)
		p.tripOnTransport(ctx, round, key, er, start)
		return er
	}

	u := t.base.JoinPath(t.repo, "manifests", ref.ManifestReference())
	if ep.Role == hosts.RoleMirror && ep.Host != "" {
		u.RawQuery = url.Values{"ns": {ep.Host}}.Encode()
	}
	req, err := p.newRequest(pctx, http.MethodHead, u.String(), t)
	if err != nil {
		er.Status, er.Reason = pb.ImageStatus_IMAGE_STATUS_UNKNOWN, err.Error()
		return er
	}
	req.Header.Set("Accept", acceptHeader)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		fail(err)
		p.tripOnTransport(ctx, round, key, er, start)
		return er
	}
	resp.Body.Close()
	er.HTTPStatus = resp.StatusCode
	er.mediaType = mediaType(resp.Header.Get("Content-Type"))
	er.RateLimitRemaining = resp.Header.Get("Ratelimit-Remaining")
	er.Status, er.Reason = classifyManifest(resp, er.mediaType, t.repo, ref)
	// Digests are parsed (go-digest), never taken as the registry wrote
	// them. A header that is no digest, on a manifest the runtime resolves
	// by tag with a known size, stops the runtime's resolver ("in header
	// not a valid digest"): no later endpoint is asked, the pull fails.
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		if d, err := digest.Parse(h); err == nil {
			er.digest = d.String()
		} else if er.Status == pb.ImageStatus_IMAGE_STATUS_AVAILABLE && ref.Digest() == "" && resp.ContentLength >= 0 {
			if len(h) > 80 {
				h = h[:80] + "…"
			}
			er.Status = pb.ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT
			er.Reason = fmt.Sprintf("registry answered the manifest with a Docker-Content-Digest that is not a valid digest (%q): the runtime stops there and asks no other endpoint", h)
			er.terminal = true
		}
	}
	if pinned := ref.Digest(); pinned != "" && er.Status == pb.ImageStatus_IMAGE_STATUS_AVAILABLE && er.digest != "" && er.digest != pinned {
		// The runtime checks what it fetches against the pinned digest
		// and refuses other content: the pull fails.
		er.Status = pb.ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT
		er.Reason = fmt.Sprintf("registry serves digest %s for the pinned %s: the runtime refuses the content (digest mismatch)", er.digest, pinned)
	}
	if er.Status == pb.ImageStatus_IMAGE_STATUS_UNAUTHORIZED {
		switch {
		case withheld != "":
			// The runtime sends them there (the fidelity matrix's
			// runtimes all do) and may well pull: pullwatch cannot tell
			// without doing the same, so it says unknown, never a false
			// unauthorized.
			er.Status = pb.ImageStatus_IMAGE_STATUS_UNKNOWN
			er.Reason = "registry requires credentials (401 Unauthorized); " + withheld + ", which the runtime does: pullwatch cannot tell whether they work"
		case cred.Secret == "":
			er.Reason = "registry requires credentials (401 Unauthorized) and the node has none for it"
		}
	}
	switch er.Status {
	case pb.ImageStatus_IMAGE_STATUS_UNAUTHORIZED:
		if ch.scheme == schemeBearer {
			// A stale token: drop it so the next round fetches a new one.
			p.tokens.forget(ch, t.repo, cred)
		}
	case pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED:
		er.RetryAfterSeconds = p.backOff(t.base.Host, resp.Header.Get("Retry-After")).Seconds()
	}
	return er
}

var errTripped = errors.New("endpoint failed earlier in this round")

// notProbed is the answer of a probe that never got its slots: the
// endpoint failed meanwhile (down), or the round ended.
func (p *Prober) notProbed(ctx context.Context, er answer, err error, down func() answer) answer {
	if errors.Is(err, errTripped) {
		return down()
	}
	er.Status, er.Reason = pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "not probed: "+cutShort(ctx, err).Error()
	return er
}

// cutShort says why the round's context ended: its cause (the round's
// deadline) when it has one.
func cutShort(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return err
}

// tripOnTransport opens the endpoint's breaker when the probe got no HTTP
// answer at all (timeout, connect, TLS, DNS): asking again this round
// would only wait again.
func (p *Prober) tripOnTransport(ctx context.Context, round *Round, key string, er answer, start time.Time) {
	if ctx.Err() == nil && er.Status == pb.ImageStatus_IMAGE_STATUS_UNREACHABLE && er.HTTPStatus == 0 {
		round.trip(key, failure{er.Status, er.Reason, er.HTTPStatus, p.opts.Now().Sub(start).Seconds(), er.terminal})
	}
}

// isTimeout reports whether err is the probe's timeout: its context's
// deadline, or the transport's own (netpath.Bound), whichever came first.
func isTimeout(pctx context.Context, err error) bool {
	var ne net.Error
	return errors.Is(pctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// classify is classifyError for a probe: when the round's context (ctx)
// ended rather than the probe's own timeout (pctx), it says so.
func (p *Prober) classify(ctx, pctx context.Context, err error) (pb.ImageStatus, string, int) {
	if ctx.Err() != nil {
		return pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "probe cut short: " + cutShort(ctx, err).Error(), 0
	}
	return classifyError(pctx, err, p.opts.Timeout)
}

// acquire takes one of the host's concurrency slots, unless the
// endpoint's breaker trips first.
func (p *Prober) acquire(ctx context.Context, host string, tripped <-chan struct{}) (func(), error) {
	p.limitMu.Lock()
	sem, ok := p.limits[host]
	if !ok {
		sem = make(chan struct{}, p.opts.PerHostConcurrency)
		p.limits[host] = sem
	}
	p.limitMu.Unlock()
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-tripped:
		return nil, errTripped
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func mediaType(ct string) string {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.TrimSpace(mt)
}

// classifyManifest maps a manifest HEAD answer to a status and reason.
func classifyManifest(resp *http.Response, mt, repo string, ref imageref.Ref) (pb.ImageStatus, string) {
	code := resp.StatusCode
	switch {
	case code == http.StatusOK:
		if mt != "" && !knownManifestType(mt) {
			return pb.ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT, fmt.Sprintf("registry serves media type %q, which the runtime does not pull", mt)
		}
		return pb.ImageStatus_IMAGE_STATUS_AVAILABLE, "manifest found"
	case code == http.StatusNotFound:
		return pb.ImageStatus_IMAGE_STATUS_ABSENT, fmt.Sprintf("manifest unknown: %s:%s", repo, ref.ManifestReference())
	case code == http.StatusUnauthorized:
		return pb.ImageStatus_IMAGE_STATUS_UNAUTHORIZED, "registry refused the credentials (401 Unauthorized)"
	case code == http.StatusForbidden:
		return pb.ImageStatus_IMAGE_STATUS_FORBIDDEN, "registry denied access (403 Forbidden)"
	case code == http.StatusTooManyRequests:
		reason := "registry rate limit reached (429 Too Many Requests)"
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			reason += ", retry after " + ra
		}
		return pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED, reason
	case code == http.StatusNotAcceptable || code == http.StatusUnsupportedMediaType:
		return pb.ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT, fmt.Sprintf("registry has no manifest in a format the runtime accepts (%s)", resp.Status)
	case code >= 500:
		// The registry is up but cannot serve: for the runtime that is the
		// same as not reaching it.
		return pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, fmt.Sprintf("registry answered %s", resp.Status)
	default:
		return pb.ImageStatus_IMAGE_STATUS_UNKNOWN, fmt.Sprintf("unexpected registry answer %s to a manifest HEAD", resp.Status)
	}
}

func knownManifestType(mt string) bool {
	for _, k := range manifestMediaTypes {
		if mt == k {
			return true
		}
	}
	return false
}

// statusError is an HTTP answer that ended a probe early (ping or token).
type statusError struct {
	status pb.ImageStatus
	code   int
	reason string
}

func (e *statusError) Error() string { return e.reason }

// classifyError turns a transport or flow error into a status, a reason
// a person can act on, and the HTTP status when there was one.
func classifyError(ctx context.Context, err error, timeout time.Duration) (pb.ImageStatus, string, int) {
	var se *statusError
	if errors.As(err, &se) {
		return se.status, se.reason, se.code
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded {
		return pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, fmt.Sprintf("timeout after %s", timeout), 0
	}
	if errors.Is(err, context.Canceled) {
		return pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "probe cancelled", 0
	}
	// The URL is already in the report; the reason is what went wrong.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	// Go names the nameserver of the agent's own resolv.conf in DNS errors,
	// even when the node's resolver (netpath) sent the query elsewhere; the
	// wrapped error names the server really asked.
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		dnsErr.Server = ""
	}
	// DNS, connect, TLS and reset errors: the runtime would not get through.
	return pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, err.Error(), 0
}

// limitedBodies caps every response body at maxBodyBytes.
type limitedBodies struct{ next http.RoundTripper }

func (l limitedBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{ReadCloser: resp.Body, left: maxBodyBytes}
	return resp, nil
}
