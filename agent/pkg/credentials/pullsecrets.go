package credentials

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/pkg/logging"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Lender is the aggregator's ReportService.Credentials, which
// pb.ReportServiceClient implements.
type Lender interface {
	Credentials(ctx context.Context, in *pb.CredentialsRequest, opts ...grpc.CallOption) (*pb.CredentialsResponse, error)
}

// PullSecretsOptions configure PullSecrets.
type PullSecretsOptions struct {
	// NodeName is sent with each request; the aggregator uses it only
	// when it lends to unverified callers (a lab): otherwise the node is
	// the one the agent's token is bound to.
	NodeName string
	// Lender is the aggregator, over the agent's connection to it.
	Lender Lender
	// MaxCache bounds how long an answer is kept in memory, whatever the
	// aggregator's cache_for says. Default 1 minute.
	MaxCache time.Duration
	// Timeout bounds one request. Default 10s.
	Timeout time.Duration
	Log     *slog.Logger
	Now     func() time.Time
}

// PullSecrets finds the imagePullSecrets of the pods on this node by
// asking the aggregator, which lends them as the Node authorizer would let
// this node's kubelet read them: the agent itself has no RBAC on Secrets
// or Pods. The pods are the runtime's (CRI sandbox namespace, name and
// UID); the aggregator answers only for those it sees bound to this node.
// Answers are held in memory only, for at most MaxCache.
type PullSecrets struct {
	lender   Lender
	node     string
	maxCache time.Duration
	timeout  time.Duration
	log      *slog.Logger
	now      func() time.Time

	group    singleflight.Group
	mu       sync.Mutex
	answers  map[string]cachedAnswer
	swept    time.Time
	reported logging.Once
}

// cachedAnswer is one request's answer, or why there was none.
type cachedAnswer struct {
	expires time.Time
	creds   []Credential
	err     error // never holds secret data
}

// Cache bounds: errors are asked again soon; at most maxAnswers answers
// are kept (an image and its pods each), far more than a node's images.
const (
	errorTTL   = 10 * time.Second
	maxAnswers = 4096
)

// NewPullSecrets returns the pull-secret source asking opts.Lender.
func NewPullSecrets(opts PullSecretsOptions) (*PullSecrets, error) {
	if opts.Lender == nil {
		return nil, errors.New("pull secrets: no aggregator to ask")
	}
	p := &PullSecrets{
		lender:   opts.Lender,
		node:     opts.NodeName,
		maxCache: opts.MaxCache,
		timeout:  opts.Timeout,
		log:      opts.Log,
		now:      opts.Now,
		answers:  map[string]cachedAnswer{},
	}
	if p.maxCache <= 0 {
		p.maxCache = time.Minute
	}
	if p.timeout <= 0 {
		p.timeout = 10 * time.Second
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.now == nil {
		p.now = time.Now
	}
	return p, nil
}

// Lookup implements Provider: the credentials of the given pods' pull
// secrets that match ref, in the kubelet's order (pod by pod; within a
// pod the most specific registry key first, its secrets in the pod's
// order within a key), as the aggregator lends them. Secrets the
// aggregator could not use are logged once each; the others still count.
func (p *PullSecrets) Lookup(ctx context.Context, ref imageref.Ref, pods []Pod) ([]Credential, error) {
	if len(pods) == 0 {
		return nil, nil
	}
	req := &pb.CredentialsRequest{Image: ref.Name(), Node: p.node}
	var key strings.Builder
	key.WriteString(req.Image)
	for _, pod := range pods {
		req.Pods = append(req.Pods, &pb.PodRef{Namespace: pod.Namespace, Name: pod.Name, Uid: pod.UID})
		fmt.Fprintf(&key, "|%s/%s/%s", pod.Namespace, pod.Name, pod.UID)
	}
	k := key.String()
	now := p.now()
	p.mu.Lock()
	a, ok := p.answers[k]
	p.mu.Unlock()
	if ok && now.Before(a.expires) {
		return a.creds, a.err
	}
	v, _, _ := p.group.Do(k, func() (any, error) {
		a := p.ask(ctx, req)
		if a.err != nil && ctx.Err() != nil {
			return a, nil // cancelled, not an answer worth remembering
		}
		p.mu.Lock()
		p.sweepLocked(now)
		p.answers[k] = a
		p.mu.Unlock()
		return a, nil
	})
	a = v.(cachedAnswer)
	return a.creds, a.err
}

// ask sends one request.
func (p *PullSecrets) ask(ctx context.Context, req *pb.CredentialsRequest) cachedAnswer {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	// Wait for the connection (within Timeout) rather than fail at once
	// while it is being made: a round right after start or a reconnect
	// would otherwise probe private images without their pull secrets.
	resp, err := p.lender.Credentials(ctx, req, grpc.WaitForReady(true))
	now := p.now()
	if err != nil {
		st, _ := status.FromError(err)
		switch st.Code() {
		case codes.PermissionDenied, codes.Unauthenticated, codes.FailedPrecondition, codes.Unimplemented:
			// A refusal by configuration: said once with what to do, and
			// not asked again for a while.
			p.logOnce(ctx, "refused|"+st.Code().String(), slog.LevelWarn,
				"the aggregator lends no pull secrets to this agent; images used by pods are probed without them (see docs/security.md)",
				"code", st.Code().String(), "why", st.Message())
			return cachedAnswer{expires: now.Add(p.maxCache), err: fmt.Errorf("pull secrets: the aggregator refused to lend: %s", st.Message())}
		}
		return cachedAnswer{expires: now.Add(errorTTL), err: fmt.Errorf("pull secrets: ask the aggregator: %w", err)}
	}
	ttl := min(resp.GetCacheFor().AsDuration(), p.maxCache)
	if ttl <= 0 {
		ttl = p.maxCache
	}
	a := cachedAnswer{expires: now.Add(ttl)}
	for _, c := range resp.GetCredentials() {
		a.creds = append(a.creds, Credential{Username: c.GetUsername(), Secret: c.GetPassword(), Source: SourcePullSecret})
	}
	for _, problem := range resp.GetProblems() {
		// The kubelet warns and pulls without such a secret; so do we.
		p.logOnce(ctx, "problem|"+problem, slog.LevelWarn, "a pull secret of a pod on this node cannot be used; probing without it", "secret", problem)
	}
	for _, r := range resp.GetRefused() {
		p.log.DebugContext(ctx, "the aggregator does not see this pod bound to this node (yet); no pull secrets for it",
			"pod", r.GetNamespace()+"/"+r.GetName(), "uid", r.GetUid(), "node", p.node)
	}
	p.log.DebugContext(ctx, "pull secrets lent", "image", req.GetImage(), "pods", len(req.GetPods()), "credentials", len(a.creds))
	return a
}

// sweepLocked drops expired answers now and then, and all of them when
// there are too many, so memory stays bounded.
func (p *PullSecrets) sweepLocked(now time.Time) {
	if len(p.answers) >= maxAnswers {
		clear(p.answers)
	}
	if now.Sub(p.swept) < p.maxCache {
		return
	}
	p.swept = now
	for k, a := range p.answers {
		if !now.Before(a.expires) {
			delete(p.answers, k)
		}
	}
}

func (p *PullSecrets) logOnce(ctx context.Context, key string, level slog.Level, msg string, args ...any) {
	p.reported.Log(ctx, p.log, key, level, msg, args...)
}
