package authn

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"

	"github.com/pullwatch/pullwatch/pkg/logging/logtest"
)

// TestHTTPWrap checks the guard's answers with stand-in reviews (the real
// TokenReview and SubjectAccessReview: e2e/authn's TestMetricsAuthorization).
func TestHTTPWrap(t *testing.T) {
	log, _ := logtest.New()
	h := &HTTP{
		log: log,
		authn: authenticator.RequestFunc(func(r *http.Request) (*authenticator.Response, bool, error) {
			switch r.Header.Get("Authorization") {
			case "":
				return nil, false, nil
			case "Bearer bad":
				return nil, false, errors.New("token not valid")
			}
			return &authenticator.Response{User: &user.DefaultInfo{Name: r.Header.Get("Authorization")[7:]}}, true, nil
		}),
		authz: authorizer.AuthorizerFunc(func(_ context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
			switch {
			case a.GetUser().GetName() == "broken":
				return authorizer.DecisionNoOpinion, "", errors.New("SAR failed")
			case a.GetUser().GetName() == "reader" && a.GetVerb() == "get" && !a.IsResourceRequest() && a.GetPath() == "/metrics":
				return authorizer.DecisionAllow, "", nil
			}
			return authorizer.DecisionNoOpinion, "no RBAC", nil
		}),
	}
	next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	handler := h.Wrap(next, "/healthz", "/readyz")
	for _, tt := range []struct {
		path, token string
		want        int
	}{
		{"/healthz", "", http.StatusTeapot},
		{"/readyz", "", http.StatusTeapot},
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "bad", http.StatusUnauthorized},
		{"/metrics", "nobody", http.StatusForbidden},
		{"/", "reader", http.StatusForbidden},
		{"/metrics", "reader", http.StatusTeapot},
		{"/metrics", "broken", http.StatusInternalServerError},
		{"/healthz/../metrics", "", http.StatusUnauthorized},
	} {
		req := httptest.NewRequest(http.MethodGet, tt.path, nil)
		if tt.token != "" {
			req.Header.Set("Authorization", "Bearer "+tt.token)
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code != tt.want {
			t.Errorf("GET %s as %q: %d, want %d (%s)", tt.path, tt.token, rec.Code, tt.want, rec.Body)
		}
	}
}
