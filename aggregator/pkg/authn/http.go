package authn

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/kubernetes"

	"github.com/pullwatch/pullwatch/pkg/logging"
)

// HTTP guards the aggregator's HTTP endpoints as kube-rbac-proxy does in
// front of kube-state-metrics: the caller's bearer token is authenticated
// with a TokenReview and the request authorized with a
// SubjectAccessReview of verb get (the method, lowercased) on the
// non-resource URL (the path), both through k8s.io/apiserver's delegating
// authenticator and authorizer, which cache the answers.
type HTTP struct {
	authn authenticator.Request
	authz authorizer.Authorizer
	// audiences, when set, are asked for in each TokenReview (through the
	// request's context, as kube-rbac-proxy does): the webhook
	// authenticator then refuses a token the review does not find valid
	// for one of them.
	audiences authenticator.Audiences
	log       *slog.Logger
}

// webhookBackoff is the API server's own retry backoff for its
// authentication and authorization webhooks.
var webhookBackoff = webhook.DefaultRetryBackoffWithInitialDelay(500 * time.Millisecond)

// NewHTTP returns the guard over client's TokenReview and
// SubjectAccessReview APIs. With audiences, the TokenReview asks for them
// and a token valid for none of them is refused (401); without, the API
// server's own audiences apply.
func NewHTTP(client kubernetes.Interface, audiences []string, log *slog.Logger) (*HTTP, error) {
	an, _, err := authenticatorfactory.DelegatingAuthenticatorConfig{
		Anonymous:                &apiserver.AnonymousAuthConfig{Enabled: false},
		TokenAccessReviewClient:  client.AuthenticationV1(),
		TokenAccessReviewTimeout: 10 * time.Second,
		WebhookRetryBackoff:      &webhookBackoff,
		CacheTTL:                 time.Minute,
	}.New()
	if err != nil {
		return nil, fmt.Errorf("HTTP authentication: %w", err)
	}
	az, err := authorizerfactory.DelegatingAuthorizerConfig{
		SubjectAccessReviewClient: client.AuthorizationV1(),
		AllowCacheTTL:             5 * time.Minute,
		DenyCacheTTL:              30 * time.Second,
		WebhookRetryBackoff:       &webhookBackoff,
	}.New()
	if err != nil {
		return nil, fmt.Errorf("HTTP authorization: %w", err)
	}
	return &HTTP{authn: an, authz: az, audiences: audiences, log: log}, nil
}

// Wrap returns next behind the guard, except for the paths in open (the
// kubelet's /healthz and /readyz probes carry no token). No token, or one
// the API does not accept: 401; not allowed: 403.
func (h *HTTP) Wrap(next http.Handler, open ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slices.Contains(open, r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		if len(h.audiences) > 0 {
			r = r.WithContext(authenticator.WithAudiences(r.Context(), h.audiences))
		}
		res, ok, err := h.authn.AuthenticateRequest(r)
		if err != nil || !ok {
			// As kube-rbac-proxy: any authentication failure is a 401.
			if err != nil {
				h.log.DebugContext(r.Context(), "HTTP request not authenticated", "path", r.URL.Path, "remote", r.RemoteAddr, logging.ErrKey, err)
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="pullwatch-aggregator"`)
			http.Error(w, "Unauthorized: send a Kubernetes bearer token", http.StatusUnauthorized)
			return
		}
		attrs := authorizer.AttributesRecord{
			User:            res.User,
			Verb:            strings.ToLower(r.Method),
			Path:            r.URL.Path,
			ResourceRequest: false,
		}
		decision, reason, err := h.authz.Authorize(r.Context(), attrs)
		if err != nil {
			h.log.WarnContext(r.Context(), "HTTP authorization failed", "path", r.URL.Path, "user", res.User.GetName(), logging.ErrKey, err)
			http.Error(w, "authorization failed", http.StatusInternalServerError)
			return
		}
		if decision != authorizer.DecisionAllow {
			h.log.DebugContext(r.Context(), "HTTP request forbidden", "path", r.URL.Path, "user", res.User.GetName(), "reason", reason)
			http.Error(w, fmt.Sprintf("Forbidden: %s may not %s %s (needs RBAC get on nonResourceURLs %s)",
				res.User.GetName(), attrs.Verb, r.URL.Path, r.URL.Path), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}
