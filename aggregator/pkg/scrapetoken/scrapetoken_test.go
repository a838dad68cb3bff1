package scrapetoken

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The real API server's side (TokenRequest bound to the Secret, the
// token's audience checked by a TokenReview, the shipped RBAC) is tested in
// e2e/authn TestScrapeTokenSecret; these are the renewal rules.
func TestEnsureRenewal(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "pullwatch", Name: "pullwatch-metrics-token", UID: "uid-1"}}
	client := fake.NewClientset(secret, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "pullwatch", Name: "scraper"}})
	minted := 0
	var asked *authenticationv1.TokenRequest
	client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		minted++
		asked = a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenRequest)
		return true, &authenticationv1.TokenRequest{Status: authenticationv1.TokenRequestStatus{
			Token:               "tok-" + string(rune('0'+minted)),
			ExpirationTimestamp: metav1.NewTime(now.Add(24 * time.Hour)),
		}}, nil
	})
	k := New(client, Options{Namespace: "pullwatch", Secret: "pullwatch-metrics-token", ServiceAccount: "scraper", Audience: "pullwatch-metrics"})
	k.now = func() time.Time { return now }
	read := func() *corev1.Secret {
		s, err := client.CoreV1().Secrets("pullwatch").Get(ctx, "pullwatch-metrics-token", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	if err := k.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	s := read()
	if string(s.Data[Key]) != "tok-1" || s.Annotations[AnnotationAudience] != "pullwatch-metrics" || s.Annotations[AnnotationExpires] != "2026-12-08T09:00:00Z" {
		t.Fatalf("secret after the first Ensure: %v %v", s.Annotations, s.Data)
	}
	if got := asked.Spec; len(got.Audiences) != 1 || got.Audiences[0] != "pullwatch-metrics" || got.BoundObjectRef == nil ||
		got.BoundObjectRef.Kind != "Secret" || got.BoundObjectRef.UID != "uid-1" || *got.ExpirationSeconds != 86400 {
		t.Errorf("token request: %+v", got)
	}

	// Fresh: nothing written.
	now = now.Add(15 * time.Hour)
	if err := k.Ensure(ctx); err != nil || minted != 1 {
		t.Fatalf("15h later: minted %d, %v; want still 1", minted, err)
	}
	// A third of its life left: renewed.
	now = now.Add(time.Hour)
	if err := k.Ensure(ctx); err != nil || minted != 2 || string(read().Data[Key]) != "tok-2" {
		t.Fatalf("16h later: minted %d, %v, token %q", minted, err, read().Data[Key])
	}
	// Another audience asked for (the flag changed): renewed.
	k.o.Audience = "other"
	if err := k.Ensure(ctx); err != nil || minted != 3 || read().Annotations[AnnotationAudience] != "other" {
		t.Fatalf("audience changed: minted %d, %v", minted, err)
	}
	// The token removed by hand: written again.
	s = read()
	delete(s.Data, Key)
	if _, err := client.CoreV1().Secrets("pullwatch").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := k.Ensure(ctx); err != nil || minted != 4 {
		t.Fatalf("token removed: minted %d, %v", minted, err)
	}
}

func TestEnsureWithoutSecretSaysWhatToApply(t *testing.T) {
	k := New(fake.NewClientset(), Options{Namespace: "pullwatch", Secret: "pullwatch-metrics-token", ServiceAccount: "scraper", Audience: "a"})
	err := k.Ensure(context.Background())
	if err == nil || !strings.Contains(err.Error(), "pullwatch/pullwatch-metrics-token") || !strings.Contains(err.Error(), "deploy/metrics-reader.yaml") {
		t.Fatalf("Ensure without the Secret: %v", err)
	}
}
