package credentials

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func pod(ns, name, node string, secrets ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}
	for _, s := range secrets {
		p.Spec.ImagePullSecrets = append(p.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
	}
	return p
}

func dockerConfigSecret(ns, name, registry, user, pass string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(configJSON(registry, user, pass))},
	}
}

// startPullSecrets runs PullSecrets on a fake API with objs and counts the
// secret gets.
func startPullSecrets(t *testing.T, now *time.Time, objs ...runtime.Object) (*PullSecrets, *fake.Clientset, *atomic.Int32) {
	t.Helper()
	client := fake.NewClientset(objs...)
	var gets atomic.Int32
	client.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		gets.Add(1)
		return false, nil, nil
	})
	var selector atomic.Value
	client.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		selector.Store(a.(k8stesting.ListAction).GetListRestrictions().Fields.String())
		return false, nil, nil
	})
	log, _ := testLogger()
	opts := PullSecretsOptions{NodeName: "node-a", Log: log}
	if now != nil {
		opts.Now = func() time.Time { return *now }
	}
	ps, err := NewPullSecrets(client, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ps.Start(ctx)
	syncCtx, syncCancel := context.WithTimeout(ctx, 10*time.Second)
	defer syncCancel()
	if !ps.WaitForSync(syncCtx) {
		t.Fatal("pod informer did not sync")
	}
	if got, _ := selector.Load().(string); got != "spec.nodeName=node-a" {
		t.Errorf("pods listed with field selector %q, want spec.nodeName=node-a", got)
	}
	return ps, client, &gets
}

func users(creds []Credential) []string {
	var out []string
	for _, c := range creds {
		out = append(out, c.Username)
	}
	return out
}

func TestPullSecretsLookup(t *testing.T) {
	legacy := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "legacy"},
		Type:       corev1.SecretTypeDockercfg,
		Data:       map[string][]byte{corev1.DockerConfigKey: []byte(`{"registry.example/team":{"auth":"` + b64("legacy:l") + `"}}`)},
	}
	opaque := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "opaque"},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(configJSON("registry.example", "opaque", "o"))},
	}
	ps, _, _ := startPullSecrets(t, nil,
		pod("shop", "web", "node-a", "host-wide", "legacy", "missing", "opaque"),
		pod("shop", "api", "node-a", "second"),
		pod("other", "web", "node-a", "host-wide"),
		dockerConfigSecret("shop", "host-wide", "registry.example", "host", "h"),
		dockerConfigSecret("shop", "second", "registry.example", "second", "s"),
		dockerConfigSecret("other", "host-wide", "elsewhere.example", "elsewhere", "e"),
		legacy, opaque,
	)
	ctx := context.Background()
	ref := mustRef(t, "registry.example/team/app:v1")
	tests := []struct {
		name string
		pods []Pod
		want []string
	}{
		{"no pods", nil, nil},
		// Within a pod: the more specific key (registry.example/team) first.
		{"one pod", []Pod{{"shop", "web"}}, []string{"legacy", "host"}},
		{"pods in order", []Pod{{"shop", "api"}, {"shop", "web"}}, []string{"second", "legacy", "host"}},
		{"a pod's secrets are in its own namespace", []Pod{{"other", "web"}}, nil},
		{"pod unknown to the API", []Pod{{"shop", "static"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds, err := ps.Lookup(ctx, ref, tt.pods)
			if err != nil {
				t.Fatal(err)
			}
			if got := users(creds); !slices.Equal(got, tt.want) {
				t.Errorf("users %v, want %v", got, tt.want)
			}
			for _, c := range creds {
				if c.Source != SourcePullSecret {
					t.Errorf("source %q", c.Source)
				}
			}
		})
	}
}

func TestPullSecretsCacheAndInvalidation(t *testing.T) {
	now := time.Unix(1000, 0)
	ps, client, gets := startPullSecrets(t, &now,
		pod("shop", "web", "node-a", "creds"),
		dockerConfigSecret("shop", "creds", "registry.example", "old", "1"),
	)
	ctx := context.Background()
	ref := mustRef(t, "registry.example/app:v1")
	web := []Pod{{"shop", "web"}}
	for range 5 {
		if _, err := ps.Lookup(ctx, ref, web); err != nil {
			t.Fatal(err)
		}
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d gets for 5 lookups within the TTL, want 1", n)
	}

	// A rotated secret is seen after the TTL.
	if _, err := client.CoreV1().Secrets("shop").Update(ctx, dockerConfigSecret("shop", "creds", "registry.example", "new", "2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if creds, _ := ps.Lookup(ctx, ref, web); !slices.Equal(users(creds), []string{"old"}) {
		t.Errorf("within the TTL: %v", users(creds))
	}
	now = now.Add(61 * time.Second)
	if creds, _ := ps.Lookup(ctx, ref, web); !slices.Equal(users(creds), []string{"new"}) {
		t.Errorf("after the TTL: %v", users(creds))
	}

	// A pod that now names another secret: the change is seen at once.
	if _, err := client.CoreV1().Secrets("shop").Create(ctx, dockerConfigSecret("shop", "other", "registry.example", "other", "3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods("shop").Update(ctx, pod("shop", "web", "node-a", "other"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		creds, _ := ps.Lookup(ctx, ref, web)
		return slices.Equal(users(creds), []string{"other"})
	})
}

func TestPullSecretsErrors(t *testing.T) {
	bad := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "corrupt"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"registry.example":{"auth":"s3cr3t!"}}}`)},
	}
	ps, client, _ := startPullSecrets(t, nil,
		pod("shop", "web", "node-a", "corrupt", "good", "forbidden"),
		bad, dockerConfigSecret("shop", "good", "registry.example", "good", "g"),
	)
	client.PrependReactor("get", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.GetAction).GetName() == "forbidden" {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "forbidden", errors.New("RBAC: no"))
		}
		return false, nil, nil
	})
	creds, err := ps.Lookup(context.Background(), mustRef(t, "registry.example/app:v1"), []Pod{{"shop", "web"}})
	if !slices.Equal(users(creds), []string{"good"}) {
		t.Errorf("users %v, want the good secret's", users(creds))
	}
	if err == nil {
		t.Fatal("no error for the corrupt and the forbidden secret")
	}
	for _, want := range []string{"pull secret shop/corrupt of pod web", "not base64", "pull secret shop/forbidden", "RBAC"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error quotes the secret: %v", err)
	}
}

func TestPullSecretsNotSynced(t *testing.T) {
	ps, err := NewPullSecrets(fake.NewClientset(), PullSecretsOptions{NodeName: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	// Not started: the pods are not known yet.
	if _, err := ps.Lookup(context.Background(), mustRef(t, "r.example/a:v1"), []Pod{{"a", "b"}}); err == nil || !strings.Contains(err.Error(), "not listed") {
		t.Errorf("err = %v", err)
	}
	if _, err := NewPullSecrets(fake.NewClientset(), PullSecretsOptions{}); err == nil {
		t.Error("no error without a node name")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
