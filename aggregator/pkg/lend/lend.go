// Package lend lends agents the pull credentials of their own node's pods,
// so that no node holds RBAC on Secrets: the aggregator answers
// ReportService.Credentials as the Node authorizer would let the caller's
// kubelet read them.
//
// A request is answered only for a caller whose ServiceAccount token was
// verified and bound to a node (authn.Identity, put in the RPC's context
// by the authn interceptor), only for pods the pod informer shows bound to
// that node (spec.nodeName, and the UID the caller names), only from the
// imagePullSecrets those pods name (after ServiceAccount admission: the
// ServiceAccount's pull secrets are in the pod spec, as the kubelet sees
// them), matched to the image as the kubelet matches (pkg/dockerauth).
//
// Secrets are read with a `get` of each secret a pod names, cached in
// memory for a minute, never listed or watched: a secret informer would
// need list/watch on secrets (every Secret of the cluster, data included,
// in the aggregator's memory and RBAC), where a get reads only the pull
// secrets that pods on reporting nodes name. Credentials are never logged,
// exported or shown; refusals are counted
// (pullwatch_credential_refusals_total) and logged once per node and
// reason.
package lend

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/pullwatch/pullwatch/aggregator/pkg/authn"
	"github.com/pullwatch/pullwatch/pkg/dockerauth"
	"github.com/pullwatch/pullwatch/pkg/logging"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Modes of --lend-credentials.
const (
	// ModeVerified lends only to callers with a verified token (--auth=kubernetes).
	ModeVerified = "verified"
	// ModeOff lends nothing: agents probe without pull secrets.
	ModeOff = "off"
	// ModeUnverifiedLab also lends to callers without a verified token,
	// for the node they name. Anyone who reaches the gRPC port can then
	// read the pull secrets of any node's pods: for a lab without the
	// token authentication only.
	ModeUnverifiedLab = "unverified-lab"
)

// Modes lists the modes, default first.
func Modes() []string { return []string{ModeVerified, ModeOff, ModeUnverifiedLab} }

// Refusal reasons, as in pullwatch_credential_refusals_total{reason}.
const (
	// ReasonOff: lending is off (--lend-credentials=off, or no Kubernetes API).
	ReasonOff = "off"
	// ReasonUnverified: the caller has no verified identity.
	ReasonUnverified = "unverified"
	// ReasonNodeMismatch: the request names a node other than the caller's token's.
	ReasonNodeMismatch = "node_mismatch"
	// ReasonInvalid: a malformed request (no image, too many pods, no node).
	ReasonInvalid = "invalid_request"
	// ReasonNotSynced: the pods are not listed from the API yet.
	ReasonNotSynced = "not_synced"
	// ReasonPodNotOnNode: a pod of the request is unknown, on another
	// node, or has another UID (counted per pod; the rest of the request
	// is answered).
	ReasonPodNotOnNode = "pod_not_on_node"
)

// Reasons lists every refusal reason, so the counters start at zero.
func Reasons() []string {
	return []string{ReasonOff, ReasonUnverified, ReasonNodeMismatch, ReasonInvalid, ReasonNotSynced, ReasonPodNotOnNode}
}

// Request bounds: a node runs at most a few hundred pods.
const (
	maxPods      = 256
	maxNameBytes = 253
	maxImage     = 4096
)

// Options configure a Lender.
type Options struct {
	// Mode is one of the Mode constants; default ModeVerified.
	Mode string
	// TTL is how long a secret read from the API is used (and how long
	// agents may keep an answer). Default 1 minute. A change of a pod's
	// imagePullSecrets drops the secrets it names at once.
	TTL time.Duration
	Log *slog.Logger
	Now func() time.Time
	// Pods, when set, is a pod informer the aggregator already runs
	// (kubewatch's), keeping at least each pod's node, UID and
	// imagePullSecrets; its owner starts it. Unset, the Lender runs one
	// of its own.
	Pods cache.SharedIndexInformer
}

// Lender answers ReportService.Credentials. It is a prometheus.Collector
// of its own counters.
type Lender struct {
	client kubernetes.Interface // nil: no API, lending off
	mode   string
	ttl    time.Duration
	log    *slog.Logger
	now    func() time.Time

	factory informers.SharedInformerFactory
	pods    cache.SharedIndexInformer

	requests *prometheus.CounterVec
	refusals *prometheus.CounterVec

	group    singleflight.Group
	mu       sync.Mutex
	secrets  map[secretKey]cachedSecret
	swept    time.Time
	reported logging.Once
}

type secretKey struct{ namespace, name string }

func (k secretKey) String() string { return k.namespace + "/" + k.name }

// cachedSecret is a secret's docker config as last read, or why it could
// not be used.
type cachedSecret struct {
	fetched time.Time
	ttl     time.Duration
	entries []dockerauth.Entry
	problem string // never secret data
}

// transientTTL bounds how long an API error (other than not found) is
// remembered, so a flaky API is asked again soon but not once per image.
const transientTTL = 10 * time.Second

// New returns a Lender reading pods and secrets through client; nil
// client (no Kubernetes API) lends nothing. Start runs its pod informer.
func New(client kubernetes.Interface, opts Options) (*Lender, error) {
	l := &Lender{
		client:  client,
		mode:    opts.Mode,
		ttl:     opts.TTL,
		log:     opts.Log,
		now:     opts.Now,
		secrets: map[secretKey]cachedSecret{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullwatch_credential_requests_total",
			Help: "Credential lending requests from agents (ReportService.Credentials), by result: lent (at least one credential), empty (answered, nothing matched), refused.",
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullwatch_credential_refusals_total",
			Help: "Credential lending refusals, by reason: off, unverified, node_mismatch, invalid_request, not_synced (the whole request), pod_not_on_node (per pod).",
		}, []string{"reason"}),
	}
	for _, r := range []string{"lent", "empty", "refused"} {
		l.requests.WithLabelValues(r)
	}
	for _, r := range Reasons() {
		l.refusals.WithLabelValues(r)
	}
	if l.mode == "" {
		l.mode = ModeVerified
	}
	if !slices.Contains(Modes(), l.mode) {
		return nil, fmt.Errorf("credential lending mode %q: want one of %v", l.mode, Modes())
	}
	if l.ttl <= 0 {
		l.ttl = time.Minute
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	if l.now == nil {
		l.now = time.Now
	}
	if client == nil || l.mode == ModeOff {
		return l, nil
	}
	l.pods = opts.Pods
	if l.pods == nil {
		// No periodic resync: the cache only answers.
		l.factory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(slimPod))
		l.pods = l.factory.Core().V1().Pods().Informer()
	}
	_, err := l.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(oldObj, newObj any) {
			o, okOld := oldObj.(*corev1.Pod)
			n, okNew := newObj.(*corev1.Pod)
			if okOld && okNew && o.UID == n.UID && slices.Equal(o.Spec.ImagePullSecrets, n.Spec.ImagePullSecrets) {
				return // status churn: the secrets it names are the same
			}
			l.forgetPod(oldObj)
			l.forgetPod(newObj)
		},
		DeleteFunc: l.forgetPod,
	})
	if err != nil {
		return nil, fmt.Errorf("credential lending: pod informer: %w", err)
	}
	return l, nil
}

// Start runs the pod informer until ctx ends and says what lending does.
func (l *Lender) Start(ctx context.Context) {
	switch {
	case l.mode == ModeOff:
		l.log.InfoContext(ctx, "credential lending off (--lend-credentials=off): agents probe without their pods' pull secrets")
		return
	case l.client == nil:
		l.log.InfoContext(ctx, "credential lending off: no Kubernetes API to read pods and pull secrets from")
		return
	case l.mode == ModeUnverifiedLab:
		l.log.WarnContext(ctx, "credential lending to unverified callers (--lend-credentials=unverified-lab): anyone who reaches the gRPC port can read the pull secrets of any node's pods; for a lab only")
	default:
		l.log.InfoContext(ctx, "credential lending on: agents with a verified token get their own node's pods' pull secrets")
	}
	if l.factory != nil {
		l.factory.Start(ctx.Done())
	}
}

// WaitForSync waits until the pods are listed, or ctx ends.
func (l *Lender) WaitForSync(ctx context.Context) bool {
	if l.pods == nil {
		return true
	}
	return cache.WaitForCacheSync(ctx.Done(), l.pods.HasSynced)
}

// slimPod keeps only what lending needs of a pod, so the cluster's pods
// cost little memory whatever their specs hold.
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
func (l *Lender) forgetPod(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range pod.Spec.ImagePullSecrets {
		delete(l.secrets, secretKey{pod.Namespace, s.Name})
	}
}

// Credentials implements ReportService.Credentials.
func (l *Lender) Credentials(ctx context.Context, req *pb.CredentialsRequest) (*pb.CredentialsResponse, error) {
	node, err := l.caller(ctx, req)
	if err != nil {
		l.requests.WithLabelValues("refused").Inc()
		return nil, err
	}
	resp := &pb.CredentialsResponse{CacheFor: durationpb.New(l.ttl)}
	for _, ref := range req.GetPods() {
		obj, found, _ := l.pods.GetStore().GetByKey(ref.GetNamespace() + "/" + ref.GetName())
		pod, _ := obj.(*corev1.Pod)
		if !found || pod == nil || pod.Spec.NodeName != node || string(pod.UID) != ref.GetUid() {
			l.refusals.WithLabelValues(ReasonPodNotOnNode).Inc()
			l.logOnce(ctx, ReasonPodNotOnNode+"|"+node, slog.LevelWarn,
				"credential lending: a pod the caller named is not bound to its node; nothing lent for it (logged once per node)",
				"node", node, "pod", ref.GetNamespace()+"/"+ref.GetName(), "uid", ref.GetUid())
			resp.Refused = append(resp.Refused, ref)
			continue
		}
		var kr dockerauth.Keyring
		for _, ps := range pod.Spec.ImagePullSecrets {
			if ps.Name == "" {
				continue
			}
			key := secretKey{pod.Namespace, ps.Name}
			entries, problem := l.secret(ctx, key)
			if problem != "" {
				resp.Problems = append(resp.Problems, key.String()+": "+problem)
				continue
			}
			kr.Add(entries)
		}
		for _, c := range kr.Lookup(req.GetImage()) {
			resp.Credentials = append(resp.Credentials, &pb.LentCredential{Username: c.Username, Password: c.Password, Secret: c.Origin})
		}
	}
	result := "empty"
	if len(resp.Credentials) > 0 {
		result = "lent"
	}
	l.requests.WithLabelValues(result).Inc()
	l.log.DebugContext(ctx, "credentials lent", "node", node, "image", req.GetImage(), "pods", len(req.GetPods()),
		"credentials", len(resp.Credentials), "refused_pods", len(resp.Refused), "problems", len(resp.Problems))
	return resp, nil
}

// caller checks the caller and the request and returns the node the
// request is answered for.
func (l *Lender) caller(ctx context.Context, req *pb.CredentialsRequest) (string, error) {
	refuse := func(reason, node string, code codes.Code, msg string) (string, error) {
		l.refusals.WithLabelValues(reason).Inc()
		l.logOnce(ctx, reason+"|"+node, slog.LevelWarn, "credential lending refused (logged once per node and reason)",
			"reason", reason, "node", node, "why", msg)
		return "", status.Error(code, msg)
	}
	id, hasID := authn.IdentityFrom(ctx)
	switch {
	case l.mode == ModeOff:
		return refuse(ReasonOff, req.GetNode(), codes.FailedPrecondition, "credential lending is off (aggregator --lend-credentials=off)")
	case l.client == nil:
		return refuse(ReasonOff, req.GetNode(), codes.FailedPrecondition, "credential lending is off: the aggregator has no Kubernetes API")
	}
	var node string
	switch {
	case hasID && id.Verified:
		if req.GetNode() != "" && req.GetNode() != id.Node {
			return refuse(ReasonNodeMismatch, id.Node, codes.PermissionDenied,
				fmt.Sprintf("request for node %q from an agent whose token is bound to node %q", req.GetNode(), id.Node))
		}
		node = id.Node
	case l.mode == ModeUnverifiedLab:
		node = req.GetNode()
		if node == "" {
			node = id.Node
		}
	default:
		return refuse(ReasonUnverified, req.GetNode(), codes.PermissionDenied,
			"credential lending needs a verified agent token (aggregator --auth=kubernetes); a lab without it may say --lend-credentials=unverified-lab")
	}
	switch {
	case node == "":
		return refuse(ReasonInvalid, node, codes.InvalidArgument, "no node: the caller's token names none and the request has no node")
	case req.GetImage() == "" || len(req.GetImage()) > maxImage:
		return refuse(ReasonInvalid, node, codes.InvalidArgument, fmt.Sprintf("image: want a repository name of 1 to %d bytes", maxImage))
	case len(req.GetPods()) > maxPods:
		return refuse(ReasonInvalid, node, codes.InvalidArgument, fmt.Sprintf("%d pods: at most %d", len(req.GetPods()), maxPods))
	}
	for i, p := range req.GetPods() {
		if p.GetNamespace() == "" || p.GetName() == "" || len(p.GetNamespace()) > maxNameBytes || len(p.GetName()) > maxNameBytes || len(p.GetUid()) > maxNameBytes {
			return refuse(ReasonInvalid, node, codes.InvalidArgument, fmt.Sprintf("pods[%d]: want a namespace and a name of 1 to %d bytes", i, maxNameBytes))
		}
	}
	if !l.pods.HasSynced() {
		return refuse(ReasonNotSynced, node, codes.Unavailable, "the aggregator has not listed the cluster's pods yet; ask again")
	}
	return node, nil
}

// secret returns a secret's docker config entries, from the cache or one
// `get` (concurrent lookups of the same secret share it), or why it
// cannot be used.
func (l *Lender) secret(ctx context.Context, key secretKey) ([]dockerauth.Entry, string) {
	now := l.now()
	l.mu.Lock()
	c, ok := l.secrets[key]
	l.mu.Unlock()
	if ok && now.Sub(c.fetched) < c.ttl {
		return c.entries, c.problem
	}
	v, _, _ := l.group.Do(key.String(), func() (any, error) {
		// The read outlives a caller that gives up: others share it.
		c := l.fetch(context.WithoutCancel(ctx), key)
		l.mu.Lock()
		l.secrets[key] = c
		l.sweepLocked(c.fetched)
		l.mu.Unlock()
		return c, nil
	})
	c = v.(cachedSecret)
	return c.entries, c.problem
}

// fetchTimeout bounds one secret read.
const fetchTimeout = 10 * time.Second

// fetch reads one secret from the API.
func (l *Lender) fetch(ctx context.Context, key secretKey) cachedSecret {
	c := cachedSecret{fetched: l.now(), ttl: l.ttl}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	s, err := l.client.CoreV1().Secrets(key.namespace).Get(ctx, key.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		// The kubelet warns and pulls without it.
		c.problem = "not found; the kubelet pulls without it too"
		return c
	case apierrors.IsForbidden(err):
		l.logOnce(ctx, "forbidden|"+key.namespace, slog.LevelError,
			"credential lending: the aggregator may not get secrets in this namespace: grant it `get` on secrets (deploy/ and docs/security.md)",
			"namespace", key.namespace, logging.ErrKey, err.Error())
		c.ttl = min(l.ttl, transientTTL)
		c.problem = "the aggregator may not read it (RBAC: get secrets)"
		return c
	case err != nil:
		c.ttl = min(l.ttl, transientTTL)
		c.problem = "the aggregator could not read it from the Kubernetes API"
		l.logOnce(ctx, "get|"+key.String(), slog.LevelWarn, "credential lending: reading a pull secret failed", "secret", key.String(), logging.ErrKey, err.Error())
		return c
	}
	entries, err := secretEntries(s)
	if err != nil {
		c.problem = err.Error()
		return c
	}
	for i := range entries {
		entries[i].Origin = key.String()
	}
	c.entries = entries
	return c
}

// secretEntries reads a pull secret as the kubelet's MakeDockerKeyring
// does: kubernetes.io/dockerconfigjson with .dockerconfigjson, or
// kubernetes.io/dockercfg with .dockercfg; any other secret gives nothing.
// Errors never quote the data.
func secretEntries(s *corev1.Secret) ([]dockerauth.Entry, error) {
	var cfg dockerauth.Config
	var err error
	if data := s.Data[corev1.DockerConfigJsonKey]; s.Type == corev1.SecretTypeDockerConfigJson && len(data) > 0 {
		cfg, err = dockerauth.ParseConfigJSON(data)
	} else if data := s.Data[corev1.DockerConfigKey]; s.Type == corev1.SecretTypeDockercfg && len(data) > 0 {
		cfg, err = dockerauth.ParseDockercfg(data)
	} else {
		return nil, nil
	}
	if err != nil {
		// The kubelet fails the pull on a pull secret it cannot parse.
		return nil, fmt.Errorf("type %s: %w", s.Type, err)
	}
	return cfg.Entries, nil
}

// sweepLocked drops expired secrets now and then, so secrets of pods long
// gone do not stay in memory.
func (l *Lender) sweepLocked(now time.Time) {
	if now.Sub(l.swept) < l.ttl {
		return
	}
	l.swept = now
	for k, c := range l.secrets {
		if now.Sub(c.fetched) >= c.ttl {
			delete(l.secrets, k)
		}
	}
}

func (l *Lender) logOnce(ctx context.Context, key string, level slog.Level, msg string, args ...any) {
	l.reported.Log(ctx, l.log, key, level, msg, args...)
}

// Describe implements prometheus.Collector.
func (l *Lender) Describe(ch chan<- *prometheus.Desc) {
	l.requests.Describe(ch)
	l.refusals.Describe(ch)
}

// Collect implements prometheus.Collector.
func (l *Lender) Collect(ch chan<- prometheus.Metric) {
	l.requests.Collect(ch)
	l.refusals.Collect(ch)
}
