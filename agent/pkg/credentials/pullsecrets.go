package credentials

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// PullSecretsOptions configure PullSecrets.
type PullSecretsOptions struct {
	// NodeName selects the pods watched: spec.nodeName=NodeName.
	NodeName string
	// TTL is how long a secret read from the API is used before it is read
	// again. Default 1 minute. A change of a pod's imagePullSecrets drops
	// the secrets it names at once.
	TTL time.Duration
	Log *slog.Logger
	Now func() time.Time
}

// PullSecrets finds the imagePullSecrets of the pods on this node: a pod
// informer field-selected to the node, and a `get` of each secret those
// pods name, cached for TTL. It never lists or watches secrets.
type PullSecrets struct {
	client   kubernetes.Interface
	node     string
	ttl      time.Duration
	log      *slog.Logger
	now      func() time.Time
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer

	group    singleflight.Group
	mu       sync.Mutex
	secrets  map[secretKey]cachedSecret
	swept    time.Time
	reported map[string]bool
}

type secretKey struct{ namespace, name string }

func (k secretKey) String() string { return k.namespace + "/" + k.name }

// cachedSecret is a secret's docker config as last read, or why it could
// not be used.
type cachedSecret struct {
	fetched time.Time
	ttl     time.Duration
	entries []entry
	err     error // never holds secret data
}

// transientTTL bounds how long an API error (other than not found) is
// remembered, so a flaky API is asked again soon but not once per image.
const transientTTL = 10 * time.Second

// NewPullSecrets prepares the pod informer; Start runs it.
func NewPullSecrets(client kubernetes.Interface, opts PullSecretsOptions) (*PullSecrets, error) {
	if opts.NodeName == "" {
		return nil, errors.New("pull secrets: no node name")
	}
	p := &PullSecrets{
		client:   client,
		node:     opts.NodeName,
		ttl:      opts.TTL,
		log:      opts.Log,
		now:      opts.Now,
		secrets:  map[secretKey]cachedSecret{},
		reported: map[string]bool{},
	}
	if p.ttl <= 0 {
		p.ttl = time.Minute
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.now == nil {
		p.now = time.Now
	}
	selector := fields.OneTermEqualSelector("spec.nodeName", opts.NodeName).String()
	p.factory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = selector }),
		informers.WithTransform(slimPod))
	p.informer = p.factory.Core().V1().Pods().Informer()
	_, err := p.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { p.forgetPod(obj) },
		UpdateFunc: func(oldObj, newObj any) {
			o, okOld := oldObj.(*corev1.Pod)
			n, okNew := newObj.(*corev1.Pod)
			if okOld && okNew && o.UID == n.UID && slices.Equal(o.Spec.ImagePullSecrets, n.Spec.ImagePullSecrets) {
				return // status churn: the secrets it names are the same
			}
			p.forgetPod(oldObj)
			p.forgetPod(newObj)
		},
		DeleteFunc: func(obj any) { p.forgetPod(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("pull secrets: pod informer: %w", err)
	}
	return p, nil
}

// Start runs the pod informer until ctx ends.
func (p *PullSecrets) Start(ctx context.Context) { p.factory.Start(ctx.Done()) }

// WaitForSync waits until the pods of the node are listed, or ctx ends.
func (p *PullSecrets) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), p.informer.HasSynced)
}

// slimPod keeps only what pull-secret lookup needs of a pod, so a node's
// pods cost little memory whatever their specs hold.
func slimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone: kept as is
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
		},
		Spec: corev1.PodSpec{NodeName: pod.Spec.NodeName, ImagePullSecrets: pod.Spec.ImagePullSecrets},
	}, nil
}

// forgetPod drops the cached secrets a pod names.
func (p *PullSecrets) forgetPod(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range pod.Spec.ImagePullSecrets {
		delete(p.secrets, secretKey{pod.Namespace, s.Name})
	}
}

// Lookup implements Provider: the credentials of the given pods' pull
// secrets that match ref, pod by pod in the given order, each pod's
// secrets as the kubelet combines them (one keyring per pod: the most
// specific registry key first, secrets in the pod's order within a key).
// A secret that cannot be read or parsed is skipped and named in the
// returned error; the other secrets still count.
func (p *PullSecrets) Lookup(ctx context.Context, ref imageref.Ref, pods []Pod) ([]Credential, error) {
	if len(pods) == 0 {
		return nil, nil
	}
	if !p.informer.HasSynced() {
		return nil, fmt.Errorf("pull secrets: the pods of node %s are not listed from the API yet", p.node)
	}
	var out []Credential
	var errs []error
	for _, pod := range pods {
		obj, found, err := p.informer.GetStore().GetByKey(pod.Namespace + "/" + pod.Name)
		if err != nil || !found {
			// A pod the API does not know on this node (a static pod
			// without mirror, or just deleted): it names no secrets.
			p.log.DebugContext(ctx, "pod not found in the API; no pull secrets", "pod", pod.Namespace+"/"+pod.Name, "node", p.node)
			continue
		}
		apiPod, ok := obj.(*corev1.Pod)
		if !ok {
			continue
		}
		kr := &keyring{}
		for _, ps := range apiPod.Spec.ImagePullSecrets {
			if ps.Name == "" {
				continue
			}
			entries, err := p.secret(ctx, secretKey{apiPod.Namespace, ps.Name})
			if err != nil {
				errs = append(errs, fmt.Errorf("pull secret %s/%s of pod %s: %w", apiPod.Namespace, ps.Name, apiPod.Name, err))
				continue
			}
			kr.add(entries)
		}
		for _, up := range kr.lookup(ref.Name()) {
			out = append(out, Credential{Username: up.username, Secret: up.password, Source: SourcePullSecret})
		}
	}
	return out, errors.Join(errs...)
}

// secret returns a secret's docker config entries, from the cache or one
// `get` (concurrent lookups of the same secret share it).
func (p *PullSecrets) secret(ctx context.Context, key secretKey) ([]entry, error) {
	now := p.now()
	p.mu.Lock()
	c, ok := p.secrets[key]
	p.mu.Unlock()
	if ok && now.Sub(c.fetched) < c.ttl {
		return c.entries, c.err
	}
	v, _, _ := p.group.Do(key.String(), func() (any, error) {
		c := p.fetch(ctx, key)
		if c.err != nil && ctx.Err() != nil {
			return c, nil // cancelled, not an answer worth remembering
		}
		p.mu.Lock()
		p.secrets[key] = c
		p.sweepLocked(c.fetched)
		p.mu.Unlock()
		return c, nil
	})
	c = v.(cachedSecret)
	return c.entries, c.err
}

// fetch reads one secret from the API.
func (p *PullSecrets) fetch(ctx context.Context, key secretKey) cachedSecret {
	c := cachedSecret{fetched: p.now(), ttl: p.ttl}
	s, err := p.client.CoreV1().Secrets(key.namespace).Get(ctx, key.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		// The kubelet warns and pulls without it.
		p.logOnce(ctx, "notfound|"+key.String(), slog.LevelWarn, "pull secret not found; the kubelet pulls without it too", "secret", key.String())
		return c
	case apierrors.IsForbidden(err):
		p.logOnce(ctx, "forbidden|"+key.namespace, slog.LevelError,
			"the agent may not get secrets: grant it `get` on secrets (docs/credentials.md) or run with --pull-secrets=off",
			"namespace", key.namespace, logging.ErrKey, err.Error())
		c.err = fmt.Errorf("not allowed to get the secret (RBAC): %w", err)
		return c
	case err != nil:
		c.ttl = min(p.ttl, transientTTL)
		c.err = fmt.Errorf("get: %w", err)
		return c
	}
	c.entries, c.err = secretEntries(s)
	return c
}

// secretEntries reads a pull secret as the kubelet's MakeDockerKeyring
// does: kubernetes.io/dockerconfigjson with .dockerconfigjson, or
// kubernetes.io/dockercfg with .dockercfg; any other secret gives nothing.
func secretEntries(s *corev1.Secret) ([]entry, error) {
	var cfg parsedConfig
	var err error
	if data := s.Data[corev1.DockerConfigJsonKey]; s.Type == corev1.SecretTypeDockerConfigJson && len(data) > 0 {
		cfg, err = parseDockerConfigJSON(data)
	} else if data := s.Data[corev1.DockerConfigKey]; s.Type == corev1.SecretTypeDockercfg && len(data) > 0 {
		cfg, err = parseDockercfg(data)
	} else {
		return nil, nil
	}
	if err != nil {
		// The kubelet fails the pull on a pull secret it cannot parse.
		return nil, fmt.Errorf("type %s: %w", s.Type, err)
	}
	return cfg.entries, nil
}

// sweepLocked drops expired secrets now and then, so secrets of pods long
// gone do not stay in memory.
func (p *PullSecrets) sweepLocked(now time.Time) {
	if now.Sub(p.swept) < p.ttl {
		return
	}
	p.swept = now
	for k, c := range p.secrets {
		if now.Sub(c.fetched) >= c.ttl {
			delete(p.secrets, k)
		}
	}
}

func (p *PullSecrets) logOnce(ctx context.Context, key string, level slog.Level, msg string, args ...any) {
	p.mu.Lock()
	seen := p.reported[key]
	if !seen {
		if len(p.reported) > 1024 {
			clear(p.reported)
		}
		p.reported[key] = true
	}
	p.mu.Unlock()
	if !seen {
		p.log.Log(ctx, level, msg, args...)
	}
}
