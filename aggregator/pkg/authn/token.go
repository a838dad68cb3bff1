package authn

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
)

// Audience is the audience of the agents' projected ServiceAccount tokens:
// a token minted for the Kubernetes API (or for anything else) is refused.
const Audience = "pullwatch"

// The user extra fields TokenReview sets for a token bound to a pod.
const (
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
)

// TokenReviews creates TokenReviews: kubernetes.Interface's
// AuthenticationV1().TokenReviews().
type TokenReviews interface {
	Create(ctx context.Context, review *authenticationv1.TokenReview, opts metav1.CreateOptions) (*authenticationv1.TokenReview, error)
}

// Pods gets a pod: the fallback for the node of a token whose review
// carries the pod but not the node (API servers before the node-name
// extra). A getter over the API or an informer's lister both do.
type Pods interface {
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// VerifierConfig configures NewVerifier.
type VerifierConfig struct {
	Reviews TokenReviews
	// Pods is optional: without it a token whose review names no node is
	// refused as not node-bound.
	Pods Pods
	// ServiceAccount is the agents' "namespace/name"; any other is refused.
	ServiceAccount string
	// Audience defaults to Audience.
	Audience string
	// CacheSize bounds the cached reviews (default 4096: a few per node).
	CacheSize int
	// MaxCacheTTL bounds how long a verified token is trusted without
	// asking again, even when it expires later (default 5m), so a deleted
	// pod's token stops working within that time.
	MaxCacheTTL time.Duration
	// Clock defaults to the real one.
	Clock clock.Clock

	// Timeout bounds one verification: its TokenReview and, on older
	// API servers, the get of the token's pod (default 10s).
	Timeout time.Duration
	// MaxInFlight bounds the reviews in flight at once (default 32):
	// beyond it Verify refuses at once (review_busy, Unavailable; the
	// agent retries) rather than queueing every caller behind junk
	// tokens. Cached answers need no review and are never refused so.
	MaxInFlight int
	// PerSourceBurst and PerSourceRate bound the reviews one source
	// address may cause (a token bucket; defaults 20 and 1 per second):
	// beyond them its reviews are refused (review_throttled, Unavailable)
	// while other sources' go on.
	PerSourceBurst int
	PerSourceRate  float64
}

// Verifier verifies agent tokens with TokenReview and caches the answers.
type Verifier struct {
	cfg       VerifierConfig
	namespace string
	username  string
	cache     *cache.LRUExpireCache
	// inFlight holds a slot per review in flight (MaxInFlight).
	inFlight chan struct{}
	// sources are the per-source token buckets, by address.
	sourcesMu sync.Mutex
	sources   *cache.LRUExpireCache
}

// The defaults of VerifierConfig's bounds.
const (
	DefaultMaxCacheTTL    = 5 * time.Minute
	DefaultReviewTimeout  = 10 * time.Second
	DefaultMaxInFlight    = 32
	DefaultPerSourceBurst = 20
	DefaultPerSourceRate  = 1.0
)

// sourceIdle is how long a source's token bucket is kept after it was
// made: longer than it takes to refill.
const sourceIdle = 10 * time.Minute

// negativeTTL is how long a refused token stays refused without asking
// the API again: short, so a fixed clock skew or a late pod binding heals,
// yet a client retrying with the same bad token costs no review.
const negativeTTL = 10 * time.Second

// NewVerifier returns a Verifier for cfg.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	ns, name, ok := strings.Cut(cfg.ServiceAccount, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("agent ServiceAccount %q: want namespace/name", cfg.ServiceAccount)
	}
	if cfg.Reviews == nil {
		return nil, errors.New("authn: no TokenReview client")
	}
	if cfg.Audience == "" {
		cfg.Audience = Audience
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 4096
	}
	if cfg.MaxCacheTTL <= 0 {
		cfg.MaxCacheTTL = DefaultMaxCacheTTL
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultReviewTimeout
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.PerSourceBurst <= 0 {
		cfg.PerSourceBurst = DefaultPerSourceBurst
	}
	if cfg.PerSourceRate <= 0 {
		cfg.PerSourceRate = DefaultPerSourceRate
	}
	return &Verifier{
		cfg:       cfg,
		namespace: ns,
		username:  "system:serviceaccount:" + ns + ":" + name,
		cache:     cache.NewLRUExpireCacheWithClock(cfg.CacheSize, cfg.Clock),
		inFlight:  make(chan struct{}, cfg.MaxInFlight),
		sources:   cache.NewLRUExpireCache(cfg.CacheSize),
	}, nil
}

// admit takes a review slot for a call from source, or refuses: the
// source used up its reviews, or the reviews in flight are at the cap.
// done gives the slot back.
func (v *Verifier) admit(source string) (done func(), r *Refusal) {
	v.sourcesMu.Lock()
	var lim *rate.Limiter
	if l, ok := v.sources.Get(source); ok {
		lim = l.(*rate.Limiter)
	} else {
		lim = rate.NewLimiter(rate.Limit(v.cfg.PerSourceRate), v.cfg.PerSourceBurst)
		v.sources.Add(source, lim, sourceIdle)
	}
	allowed := lim.Allow()
	v.sourcesMu.Unlock()
	if !allowed {
		return nil, refuse(ReasonReviewThrottled, "too many token reviews from this address; retry later")
	}
	select {
	case v.inFlight <- struct{}{}:
		return func() { <-v.inFlight }, nil
	default:
		return nil, refuse(ReasonReviewBusy, "the aggregator is verifying too many tokens at once; retry")
	}
}

type cached struct {
	id  Identity
	err *Refusal
}

// Verify returns the identity of token: the agents' ServiceAccount, bound
// to a pod on a node. A refusal is a *Refusal (Unauthenticated for a token
// the API does not accept, PermissionDenied for one of another account or
// bound to no node, Unavailable when the API could not be asked).
func (v *Verifier) Verify(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, refuse(ReasonMissingToken, "no bearer token: send the pod's projected ServiceAccount token (audience %s) as 'authorization: Bearer <token>'", v.cfg.Audience)
	}
	sum := sha256.Sum256([]byte(token))
	key := string(sum[:])
	if c, ok := v.cache.Get(key); ok {
		c := c.(cached)
		if c.err != nil {
			return Identity{}, c.err
		}
		return c.id, nil
	}
	done, refused := v.admit(Source(ctx))
	if refused != nil {
		return Identity{}, refused
	}
	rctx, cancel := context.WithTimeout(ctx, v.cfg.Timeout)
	id, err := v.review(rctx, token)
	cancel()
	done()
	now := v.cfg.Clock.Now()
	var r *Refusal
	switch {
	case err == nil:
		ttl := v.cfg.MaxCacheTTL
		if exp, ok := peekClaims(token).expiry(); ok && exp.Sub(now) < ttl {
			ttl = exp.Sub(now)
		}
		if ttl > 0 {
			v.cache.Add(key, cached{id: id}, ttl)
		}
		return id, nil
	case errors.As(err, &r) && r.Reason != ReasonReviewFailed:
		v.cache.Add(key, cached{err: r}, negativeTTL)
	}
	return Identity{}, err
}

func (v *Verifier) review(ctx context.Context, token string) (Identity, error) {
	tr, err := v.cfg.Reviews.Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{v.cfg.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return Identity{}, unavailable(fmt.Errorf("TokenReview: %w", err))
	}
	st := tr.Status
	if !st.Authenticated {
		return Identity{}, v.unauthenticated(token, st.Error)
	}
	if !slices.Contains(st.Audiences, v.cfg.Audience) {
		// The API server answers with the audiences the token is valid
		// for, a subset of the ones asked for (none from an API server
		// that does not check audiences: refused too).
		return Identity{}, refuse(ReasonWrongAudience, "token not valid for audience %s", v.cfg.Audience)
	}
	user := st.User.Username
	if user != v.username {
		return Identity{}, refuse(ReasonWrongServiceAccount, "token of %s; only the agents' ServiceAccount (%s) may report", user, v.cfg.ServiceAccount)
	}
	id := Identity{ServiceAccount: v.cfg.ServiceAccount, Verified: true}
	if nodes := st.User.Extra[ExtraNodeName]; len(nodes) == 1 && nodes[0] != "" {
		// A token bound to the node itself, not to a pod on it (kubectl
		// create token --bound-object-kind Node), outlives every pod:
		// only a pod-bound token dies with the agent's pod.
		if !onePod(st.User.Extra) {
			return Identity{}, refuse(ReasonNotPodBound, "token is bound to node %s but to no pod: use the agent pod's projected ServiceAccount token", nodes[0])
		}
		id.Node = nodes[0]
		return id, nil
	}
	node, err := v.podNode(ctx, st.User.Extra)
	if err != nil {
		return Identity{}, err
	}
	id.Node = node
	return id, nil
}

// onePod reports whether a review names one pod, by name and uid.
func onePod(extra map[string]authenticationv1.ExtraValue) bool {
	names, uids := extra[ExtraPodName], extra[ExtraPodUID]
	return len(names) == 1 && names[0] != "" && len(uids) == 1 && uids[0] != ""
}

// podNode is the node of the pod a token is bound to, for API servers
// that name the pod but not the node in the review.
func (v *Verifier) podNode(ctx context.Context, extra map[string]authenticationv1.ExtraValue) (string, error) {
	names, uids := extra[ExtraPodName], extra[ExtraPodUID]
	if len(names) != 1 || len(uids) != 1 || v.cfg.Pods == nil {
		return "", refuse(ReasonNotNodeBound, "token is not bound to a pod on a node: use the pod's projected ServiceAccount token, not a TokenRequest without a bound pod")
	}
	pod, err := v.cfg.Pods.GetPod(ctx, v.namespace, names[0])
	switch {
	case apierrors.IsNotFound(err):
		return "", refuse(ReasonNotNodeBound, "token is bound to pod %s/%s, which no longer exists", v.namespace, names[0])
	case err != nil:
		return "", unavailable(fmt.Errorf("pod %s/%s of the token: %w", v.namespace, names[0], err))
	case string(pod.UID) != uids[0]:
		return "", refuse(ReasonNotNodeBound, "token is bound to an earlier pod named %s/%s", v.namespace, names[0])
	case pod.Spec.NodeName == "":
		return "", refuse(ReasonNotNodeBound, "token is bound to pod %s/%s, which is on no node", v.namespace, names[0])
	}
	return pod.Spec.NodeName, nil
}

// unauthenticated classifies a token the API server did not accept, by
// its unverified claims (only ever to name the reason: nothing here is
// trusted), and keeps the API server's words out of the agent's answer.
func (v *Verifier) unauthenticated(token, apiError string) *Refusal {
	c := peekClaims(token)
	if exp, ok := c.expiry(); ok && !v.cfg.Clock.Now().Before(exp) {
		return refuse(ReasonExpiredToken, "token expired at %s: the kubelet rotates projected tokens; read the file again", exp.UTC().Format(time.RFC3339))
	}
	if c.valid && !slices.Contains(c.Aud, v.cfg.Audience) {
		return refuse(ReasonWrongAudience, "token not valid for audience %s: project the token with audience %s", v.cfg.Audience, v.cfg.Audience)
	}
	r := refuse(ReasonInvalidToken, "token not accepted by the Kubernetes API")
	r.detail = apiError
	return r
}

// claims are the fields of a JWT payload used to name a refusal and to
// bound the cache. Read without verifying the signature: TokenReview
// verifies.
type claims struct {
	valid bool
	Exp   *int64   `json:"exp"`
	Aud   audience `json:"aud"`
}

// audience is a JWT "aud": one string or a list.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audience{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(a))
}

func peekClaims(token string) claims {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return claims{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return claims{}
	}
	var c claims
	if json.Unmarshal(payload, &c) != nil {
		return claims{}
	}
	c.valid = true
	return c
}

func (c claims) expiry() (time.Time, bool) {
	if !c.valid || c.Exp == nil {
		return time.Time{}, false
	}
	return time.Unix(*c.Exp, 0), true
}

// ClientPods gets pods through the API (RBAC: get pods in the agents'
// namespace).
type ClientPods struct{ Client kubernetes.Interface }

// GetPod implements Pods.
func (c ClientPods) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}
