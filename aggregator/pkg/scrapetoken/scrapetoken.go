// Package scrapetoken keeps a token for the aggregator's own HTTP audience
// in a Secret, so that a scraper that can only name a Secret (the
// Prometheus operator's ServiceMonitor `authorization.credentials`; its
// `bearerTokenFile` is deprecated) sends a token that reads /metrics and is
// worthless against the Kubernetes API.
//
// The token is a TokenRequest for one ServiceAccount (bound to the
// pullwatch-metrics-reader ClusterRole), for one audience, bound to the
// Secret itself: deleting the Secret revokes it. It is valid for TTL and
// renewed when a third of that is left or the Secret's token is not the
// one this package wrote (another audience, missing, edited). Replicas
// race harmlessly: whichever writes last wins and both tokens are valid.
package scrapetoken

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/pullwatch/pullwatch/pkg/logging"
)

// The Secret's key and annotations. Key is what a ServiceMonitor's
// authorization.credentials.key names.
const (
	Key                = "token"
	AnnotationExpires  = "pullwatch.io/token-expires"
	AnnotationAudience = "pullwatch.io/token-audience"
	AnnotationAccount  = "pullwatch.io/token-service-account"
)

// Options say which Secret holds whose token for which audience.
type Options struct {
	Namespace      string
	Secret         string
	ServiceAccount string
	Audience       string
	// TTL is the token's requested lifetime (the API server may shorten
	// it; the expiry it answers is what counts). 24h when zero.
	TTL time.Duration
	// Check is how often the Secret is looked at. 5m when zero.
	Check time.Duration
	Log   *slog.Logger
}

// Keeper writes and renews the token.
type Keeper struct {
	client kubernetes.Interface
	o      Options
	now    func() time.Time
}

// New returns a Keeper over client.
func New(client kubernetes.Interface, o Options) *Keeper {
	if o.TTL == 0 {
		o.TTL = 24 * time.Hour
	}
	if o.Check == 0 {
		o.Check = 5 * time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Keeper{client: client, o: o, now: time.Now}
}

// Run keeps the Secret's token fresh until ctx ends: at once, then every
// Check. A failure is logged (with what to fix) and tried again at the
// next check.
func (k *Keeper) Run(ctx context.Context) {
	t := time.NewTicker(k.o.Check)
	defer t.Stop()
	failing := false
	for {
		if err := k.Ensure(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			k.o.Log.WarnContext(ctx, "scrape token not written; scrapers that read it will get 401 once the last one expires", logging.ErrKey, err)
			failing = true
		} else if failing {
			k.o.Log.InfoContext(ctx, "scrape token written again", "secret", k.o.Namespace+"/"+k.o.Secret)
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Ensure renews the Secret's token if it needs it.
func (k *Keeper) Ensure(ctx context.Context) error {
	secrets := k.client.CoreV1().Secrets(k.o.Namespace)
	s, err := secrets.Get(ctx, k.o.Secret, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("secret %s/%s: %w (deploy/metrics-reader.yaml creates it, empty; the aggregator may only update it)", k.o.Namespace, k.o.Secret, err)
		}
		return fmt.Errorf("secret %s/%s: %w", k.o.Namespace, k.o.Secret, err)
	}
	if !k.needsRenewal(s) {
		return nil
	}
	tr, err := k.client.CoreV1().ServiceAccounts(k.o.Namespace).CreateToken(ctx, k.o.ServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{k.o.Audience},
			ExpirationSeconds: ptr.To(int64(k.o.TTL / time.Second)),
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				APIVersion: "v1", Kind: "Secret", Name: s.Name, UID: s.UID,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token of ServiceAccount %s/%s for audience %s: %w", k.o.Namespace, k.o.ServiceAccount, k.o.Audience, err)
	}
	s = s.DeepCopy()
	if s.Data == nil {
		s.Data = map[string][]byte{}
	}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Data[Key] = []byte(tr.Status.Token)
	exp := tr.Status.ExpirationTimestamp.UTC()
	s.Annotations[AnnotationExpires] = exp.Format(time.RFC3339)
	s.Annotations[AnnotationAudience] = k.o.Audience
	s.Annotations[AnnotationAccount] = k.o.ServiceAccount
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			// Another replica renewed it first: its token serves.
			return nil
		}
		return fmt.Errorf("write the token into secret %s/%s: %w", k.o.Namespace, k.o.Secret, err)
	}
	k.o.Log.InfoContext(ctx, "scrape token written", "secret", k.o.Namespace+"/"+k.o.Secret,
		"service_account", k.o.ServiceAccount, "audience", k.o.Audience, "expires", exp.Format(time.RFC3339))
	return nil
}

// needsRenewal: no token, written for another audience or account, no
// readable expiry, or a third of the lifetime (or less) left.
func (k *Keeper) needsRenewal(s *corev1.Secret) bool {
	if len(s.Data[Key]) == 0 || s.Annotations[AnnotationAudience] != k.o.Audience || s.Annotations[AnnotationAccount] != k.o.ServiceAccount {
		return true
	}
	exp, err := time.Parse(time.RFC3339, s.Annotations[AnnotationExpires])
	if err != nil {
		return true
	}
	return exp.Sub(k.now()) <= k.o.TTL/3
}
