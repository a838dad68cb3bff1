package lend

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/pullwatch/pullwatch/aggregator/pkg/authn"
	"github.com/pullwatch/pullwatch/pkg/logging/logtest"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// TestLendKubeletOrder: the secrets' types and keys as the kubelet reads
// and matches them, pod by pod.
func TestLendKubeletOrder(t *testing.T) {
	legacy := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "legacy"},
		Type:       corev1.SecretTypeDockercfg,
		Data:       map[string][]byte{corev1.DockerConfigKey: []byte(`{"registry.example/team":{"username":"legacy","password":"l"}}`)},
	}
	opaque := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "opaque"},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: dockerSecret("", "", "registry.example", "opaque", "o").Data[corev1.DockerConfigJsonKey]},
	}
	s := startLender(t, ModeVerified, &authn.Identity{Node: "node-a", Verified: true},
		pod("shop", "web", "node-a", "host-wide", "legacy", "opaque"),
		pod("shop", "api", "node-a", "second"),
		pod("other", "web", "node-a", "host-wide"),
		dockerSecret("shop", "host-wide", "registry.example", "host", "h"),
		dockerSecret("shop", "second", "registry.example", "second", "s"),
		dockerSecret("other", "host-wide", "elsewhere.example", "elsewhere", "e"),
		legacy, opaque,
	)
	for _, tt := range []struct {
		name string
		pods []*pb.PodRef
		want string
	}{
		// Within a pod: the more specific key (registry.example/team) first;
		// an Opaque secret gives nothing, as in the kubelet.
		{"one pod", []*pb.PodRef{ref("shop", "web")}, "legacy@shop/legacy,host@shop/host-wide"},
		{"pods in the request's order", []*pb.PodRef{ref("shop", "api"), ref("shop", "web")}, "second@shop/second,legacy@shop/legacy,host@shop/host-wide"},
		{"a pod's secrets are those of its own namespace", []*pb.PodRef{ref("other", "web")}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := s.client.Credentials(context.Background(), &pb.CredentialsRequest{Image: "registry.example/team/app", Pods: tt.pods})
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(users(resp), ","); got != tt.want {
				t.Errorf("lent %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLendSecretReads: one get per secret for many requests (cached), again
// after the TTL, and at once when a pod's imagePullSecrets change.
func TestLendSecretReads(t *testing.T) {
	objs := []runtime.Object{pod("shop", "web", "node-a", "regcred"), dockerSecret("shop", "regcred", "registry.example", "right", secretPass)}
	client := fake.NewClientset(objs...)
	var gets atomic.Int32
	client.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		gets.Add(1)
		return false, nil, nil
	})
	now := time.Unix(1000, 0)
	log, _ := logtest.New()
	l, err := New(client, Options{Mode: ModeVerified, Log: log, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); l.factory.Shutdown() }()
	l.Start(ctx)
	if !l.WaitForSync(ctx) {
		t.Fatal("not synced")
	}
	vctx := authn.WithIdentity(ctx, authn.Identity{Node: "node-a", Verified: true})
	lend := func() []string {
		t.Helper()
		resp, err := l.Credentials(vctx, &pb.CredentialsRequest{Image: "registry.example/app", Pods: []*pb.PodRef{ref("shop", "web")}})
		if err != nil {
			t.Fatal(err)
		}
		return users(resp)
	}
	for range 5 {
		lend()
	}
	if gets.Load() != 1 {
		t.Errorf("%d gets for 5 requests within the TTL, want 1", gets.Load())
	}
	now = now.Add(time.Minute)
	lend()
	if gets.Load() != 2 {
		t.Errorf("%d gets after the TTL, want 2", gets.Load())
	}

	// The pod now names another secret: the old one is forgotten at once.
	p := pod("shop", "web", "node-a", "other")
	if _, err := client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		_, cached := l.secrets[secretKey{"shop", "regcred"}]
		l.mu.Unlock()
		if !cached {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the secret the pod no longer names is still cached")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := lend(); len(got) != 0 {
		t.Errorf("lent %v from a secret the pod no longer names", got)
	}
}
