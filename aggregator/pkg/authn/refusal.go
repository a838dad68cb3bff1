package authn

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/cache"

	"github.com/pullwatch/pullwatch/pkg/logging"
)

// The reasons an agent is refused, as in
// pullwatch_aggregator_auth_refused_total{reason}.
const (
	// ReasonMissingToken: no "authorization: Bearer" metadata (Unauthenticated).
	ReasonMissingToken = "missing_token"
	// ReasonInvalidToken: a token the API server does not accept (Unauthenticated).
	ReasonInvalidToken = "invalid_token"
	// ReasonExpiredToken: an expired token (Unauthenticated).
	ReasonExpiredToken = "expired_token"
	// ReasonWrongAudience: a token for another audience than pullwatch (Unauthenticated).
	ReasonWrongAudience = "wrong_audience"
	// ReasonWrongServiceAccount: a valid token of another ServiceAccount (PermissionDenied).
	ReasonWrongServiceAccount = "wrong_service_account"
	// ReasonNotNodeBound: a token bound to no pod on a node (PermissionDenied).
	ReasonNotNodeBound = "not_node_bound"
	// ReasonNodeMismatch: a report for another node than the token's (PermissionDenied).
	ReasonNodeMismatch = "node_mismatch"
	// ReasonReviewFailed: the Kubernetes API could not be asked (Unavailable).
	ReasonReviewFailed = "review_failed"
	// ReasonReviewBusy: too many reviews in flight; refused at once (Unavailable).
	ReasonReviewBusy = "review_busy"
	// ReasonReviewThrottled: the source address caused too many reviews (Unavailable).
	ReasonReviewThrottled = "review_throttled"
	// ReasonNotPodBound: a token bound to a node but to no pod on it (PermissionDenied).
	ReasonNotPodBound = "not_pod_bound"
)

// Reasons lists every reason, so the counter's series start at zero.
func Reasons() []string {
	return []string{ReasonMissingToken, ReasonInvalidToken, ReasonExpiredToken, ReasonWrongAudience,
		ReasonWrongServiceAccount, ReasonNotNodeBound, ReasonNodeMismatch, ReasonReviewFailed,
		ReasonReviewBusy, ReasonReviewThrottled, ReasonNotPodBound}
}

// Refusal is why a caller was refused. It is a gRPC status error: the
// message is what the agent is told, never the token or the API server's
// own words (kept in detail, for the aggregator's log).
type Refusal struct {
	Reason string
	Code   codes.Code
	Msg    string
	detail string
}

func (r *Refusal) Error() string { return r.Msg }

// GRPCStatus makes a Refusal (also wrapped) answer with its code.
func (r *Refusal) GRPCStatus() *status.Status { return status.New(r.Code, r.Msg) }

var reasonCodes = map[string]codes.Code{
	ReasonMissingToken:        codes.Unauthenticated,
	ReasonInvalidToken:        codes.Unauthenticated,
	ReasonExpiredToken:        codes.Unauthenticated,
	ReasonWrongAudience:       codes.Unauthenticated,
	ReasonWrongServiceAccount: codes.PermissionDenied,
	ReasonNotNodeBound:        codes.PermissionDenied,
	ReasonNodeMismatch:        codes.PermissionDenied,
	ReasonReviewFailed:        codes.Unavailable,
	ReasonReviewBusy:          codes.Unavailable,
	ReasonReviewThrottled:     codes.Unavailable,
	ReasonNotPodBound:         codes.PermissionDenied,
}

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Code: reasonCodes[reason], Msg: fmt.Sprintf(format, args...)}
}

func unavailable(err error) *Refusal {
	return &Refusal{Reason: ReasonReviewFailed, Code: codes.Unavailable, Msg: "cannot verify the token now; retry", detail: err.Error()}
}

// Refusals counts refusals by reason and logs each source (a peer
// address) once per reason within logEvery, so a client retrying in a
// loop does not flood the log.
type Refusals struct {
	counter *prometheus.CounterVec
	log     *slog.Logger
	logged  *cache.LRUExpireCache
}

// logEvery is how long one source's refusal for one reason is not logged again.
const logEvery = 10 * time.Minute

// NewRefusals returns the counter and log of refusals. It is a
// prometheus.Collector of pullwatch_aggregator_auth_refused_total.
func NewRefusals(log *slog.Logger) *Refusals {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pullwatch_aggregator_auth_refused_total",
		Help: "Agent streams and reports refused by authentication, by reason: missing_token, invalid_token, expired_token, wrong_audience (Unauthenticated); " +
			"wrong_service_account, not_node_bound, not_pod_bound, node_mismatch (PermissionDenied); review_failed (the Kubernetes API could not be asked), " +
			"review_busy (too many reviews in flight), review_throttled (too many reviews from the caller's address) (Unavailable).",
	}, []string{"reason"})
	for _, r := range Reasons() {
		c.WithLabelValues(r)
	}
	return &Refusals{counter: c, log: log, logged: cache.NewLRUExpireCache(4096)}
}

// Describe implements prometheus.Collector.
func (r *Refusals) Describe(ch chan<- *prometheus.Desc) { r.counter.Describe(ch) }

// Collect implements prometheus.Collector.
func (r *Refusals) Collect(ch chan<- prometheus.Metric) { r.counter.Collect(ch) }

// Refuse counts ref and logs it unless source was logged for the same
// reason within the last 10 minutes.
func (r *Refusals) Refuse(ctx context.Context, source string, ref *Refusal) {
	r.counter.WithLabelValues(ref.Reason).Inc()
	key := source + "\x00" + ref.Reason
	if _, seen := r.logged.Get(key); seen {
		return
	}
	r.logged.Add(key, struct{}{}, logEvery)
	args := []any{"source", source, "reason", ref.Reason, "code", ref.Code.String(), "refusal", ref.Msg}
	if ref.detail != "" {
		args = append(args, logging.ErrKey, ref.detail)
	}
	r.log.WarnContext(ctx, "agent refused (logged once per source and reason every "+logEvery.String()+")", args...)
}
