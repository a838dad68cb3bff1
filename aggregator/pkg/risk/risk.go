// Package risk says which pods would fail to start now: where the nodes'
// results (diagnose) meet the Kubernetes API's pods (kubewatch).
//
// A container is at risk on its node when the image's status from that
// node is not available and the kubelet would have to pull it on a
// restart: the image is not in the node's cache (reason not_cached), or
// the pull policy is Always (reason pull_always; the API's default for
// :latest and untagged references). A cached image with IfNotPresent (or
// Never) is safe through a registry outage: it is listed as safe, never as
// at risk.
//
// A workload container (Deployment, StatefulSet, DaemonSet, Job/CronJob,
// bare Pod) is assessed on every live node: on how many a new replica
// would fail to pull now. A node that has no result for the image (it
// does not run it) gets the image's status from what is shared across
// nodes: a registry answer (absent, unauthorized, ... scope image) holds
// everywhere, a node that reaches none of the registry's endpoints cannot
// pull, a cluster- or zone-wide failure holds for its nodes, and an image
// available elsewhere is available. Otherwise nothing is known and no
// risk is claimed.
//
// Assess is a pure function of its input.
package risk

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	corev1 "k8s.io/api/core/v1"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
	"github.com/pullwatch/pullwatch/aggregator/pkg/kubewatch"
	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
)

// Reason says why a container is at risk.
type Reason string

const (
	// NotCached: the image is not in the node's cache, so a restart pulls.
	NotCached = Reason("not_cached")
	// PullAlways: the pull policy is Always (explicitly, or the default
	// for :latest and untagged references), so a restart pulls.
	PullAlways = Reason("pull_always")
)

// Filter selects what is watched (imagefilter.Filter); nil watches all.
type Filter interface {
	Image(ref string) bool
	Namespace(name string) bool
}

// Container is one container of a pod on its node.
type Container struct {
	Node, Namespace, Pod, Container string
	// Image is the normalized reference (as in every pullwatch_* family);
	// Spec is what the pod spec writes.
	Image, Spec    string
	Kind, Workload string
	PullPolicy     corev1.PullPolicy
	Cached         bool
	// Status is the image's status from the node; Since when the node
	// has seen it (zero when unknown).
	Status pb.ImageStatus
	Since  time.Time
	// Reason is set for containers at risk.
	Reason Reason
}

// Workload is one container of a workload, assessed on every live node.
type Workload struct {
	Namespace, Kind, Name, Container, Image string
	PullPolicy                              corev1.PullPolicy
	// Nodes are the live nodes where a new replica would fail to pull
	// now, by name.
	Nodes []string
}

// Assessment is Assess's answer.
type Assessment struct {
	// AtRisk are the containers that would fail to (re)start on their
	// node, ordered by node, namespace, pod, container.
	AtRisk []Container
	// Safe are containers whose image is not available from their node
	// but that would restart from the cache (cached, IfNotPresent or
	// Never): what an outage does not touch.
	Safe []Container
	// Workloads has every workload container with a pullable image
	// reference, risky or not, ordered by namespace, kind, name,
	// container.
	Workloads []Workload
	// Live is the number of live nodes each workload was assessed on.
	Live int
}

// Normalize returns the reference the agents report for a pod spec's
// image (distribution/reference, as the kubelet and containerd
// normalize), and its registry host; ok is false for what is no registry
// reference.
func Normalize(spec string) (ref, registry string, ok bool) {
	named, err := reference.ParseNormalizedNamed(spec)
	if err != nil {
		return "", "", false
	}
	ref, registry = normalized(named)
	return ref, registry, true
}

// normalized is Normalize of a parsed spec.
func normalized(named reference.Named) (ref, registry string) {
	named = reference.TagNameOnly(named)
	return named.String(), reference.Domain(named)
}

// EffectivePullPolicy is the policy the kubelet applies: the spec's, or
// the API's default when empty (Always for :latest or no tag, unless
// pinned by digest; IfNotPresent otherwise).
func EffectivePullPolicy(spec string, p corev1.PullPolicy) corev1.PullPolicy {
	if p != "" {
		return p
	}
	named, err := reference.ParseNormalizedNamed(spec)
	if err != nil {
		return corev1.PullIfNotPresent
	}
	return defaultPolicy(named)
}

// defaultPolicy is the API's default pull policy for a parsed spec.
func defaultPolicy(named reference.Named) corev1.PullPolicy {
	if _, digested := named.(reference.Digested); digested {
		return corev1.PullIfNotPresent
	}
	if t, tagged := named.(reference.Tagged); !tagged || t.Tag() == "latest" {
		return corev1.PullAlways
	}
	return corev1.PullIfNotPresent
}

// nodeFacts is one live node's results, indexed.
type nodeFacts struct {
	name   string
	zone   string
	images map[string]nodeimage.Image
	// reach[registry] is true when some endpoint of the registry
	// answered the node, false when it tried some and none did.
	reach map[string]bool
}

// Assess computes the risk of pods (from kubewatch) against the
// diagnosis r. filter may be nil.
func Assess(r *diagnose.Report, pods []kubewatch.PodFacts, filter Filter) *Assessment {
	a := &Assessment{}
	nodes := map[string]*nodeFacts{}
	var live []*nodeFacts
	for i := range r.Nodes {
		n := &r.Nodes[i]
		if !n.Live() {
			continue
		}
		f := &nodeFacts{name: n.Name, zone: n.Zone, images: make(map[string]nodeimage.Image, len(n.Images)), reach: map[string]bool{}}
		for _, im := range n.Images {
			f.images[im.GetImage()] = im
		}
		for _, ep := range r.NodeEndpoints[i] {
			f.reach[ep.Registry] = f.reach[ep.Registry] || ep.Up
		}
		nodes[n.Name] = f
		live = append(live, f)
	}
	a.Live = len(live)
	findings := make(map[string]*diagnose.ImageFinding, len(r.Images))
	for i := range r.Images {
		findings[r.Images[i].Image] = &r.Images[i]
	}

	type wkey struct{ namespace, kind, name, container, image string }
	workloads := map[wkey]*Workload{}
	// Parsing a reference is most of the cost; pods of a workload share
	// their spec strings.
	type parsed struct {
		ref, registry string
		watched       bool // parsed, and not filtered out
		defaultPolicy corev1.PullPolicy
	}
	specs := map[string]parsed{}
	for _, p := range pods {
		if filter != nil && !filter.Namespace(p.Namespace) {
			continue
		}
		for _, c := range p.Containers {
			sp, seen := specs[c.Image]
			if !seen {
				if named, err := reference.ParseNormalizedNamed(c.Image); err == nil {
					sp.defaultPolicy = defaultPolicy(named)
					sp.ref, sp.registry = normalized(named)
					sp.watched = filter == nil || filter.Image(sp.ref)
				}
				specs[c.Image] = sp
			}
			ref, registry := sp.ref, sp.registry
			if !sp.watched {
				continue
			}
			policy := cmp.Or(c.PullPolicy, sp.defaultPolicy)
			k := wkey{p.Namespace, p.Kind, p.Workload, c.Name, ref}
			if _, seen := workloads[k]; !seen {
				w := &Workload{Namespace: p.Namespace, Kind: p.Kind, Name: p.Workload, Container: c.Name, Image: ref, PullPolicy: policy}
				for _, n := range live {
					st, cached, known := status(n, ref, registry, findings[ref])
					if _, fails := fails(st, cached, known, policy); fails {
						w.Nodes = append(w.Nodes, n.name)
					}
				}
				workloads[k] = w
			}
			n := nodes[p.Node]
			if n == nil {
				continue // the node is not live: nothing to say
			}
			st, cached, known := status(n, ref, registry, findings[ref])
			if !known || st == pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
				continue
			}
			ct := Container{Node: p.Node, Namespace: p.Namespace, Pod: p.Name, Container: c.Name, Image: ref, Spec: c.Image,
				Kind: p.Kind, Workload: p.Workload, PullPolicy: policy, Cached: cached, Status: st}
			if im := n.images[ref]; im.ImageReport != nil && im.GetStatusSince() != nil {
				ct.Since = im.GetStatusSince().AsTime()
			}
			if reason, at := fails(st, cached, known, policy); at {
				ct.Reason = reason
				a.AtRisk = append(a.AtRisk, ct)
			} else {
				a.Safe = append(a.Safe, ct)
			}
		}
	}
	for _, w := range workloads {
		a.Workloads = append(a.Workloads, *w)
	}
	byContainer := func(x, y Container) int {
		return cmp.Or(strings.Compare(x.Node, y.Node), strings.Compare(x.Namespace, y.Namespace),
			strings.Compare(x.Pod, y.Pod), strings.Compare(x.Container, y.Container))
	}
	slices.SortFunc(a.AtRisk, byContainer)
	slices.SortFunc(a.Safe, byContainer)
	slices.SortFunc(a.Workloads, func(x, y Workload) int {
		return cmp.Or(strings.Compare(x.Namespace, y.Namespace), strings.Compare(x.Kind, y.Kind),
			strings.Compare(x.Name, y.Name), strings.Compare(x.Container, y.Container), strings.Compare(x.Image, y.Image))
	})
	return a
}

// fails says whether a pull is needed and would fail: the status is known
// and not available, and the image is not cached or always pulled.
// Never never pulls: a missing image fails with ErrImageNeverPull
// whatever the registry says, which is no registry risk.
func fails(st pb.ImageStatus, cached, known bool, policy corev1.PullPolicy) (Reason, bool) {
	switch {
	case !known || st == pb.ImageStatus_IMAGE_STATUS_AVAILABLE || policy == corev1.PullNever:
		return "", false
	case !cached:
		return NotCached, true
	case policy == corev1.PullAlways:
		return PullAlways, true
	}
	return "", false
}

// status is the image's status from node n, whether n has it cached, and
// whether anything is known (see the package comment).
func status(n *nodeFacts, ref, registry string, f *diagnose.ImageFinding) (st pb.ImageStatus, cached, known bool) {
	if im := n.images[ref]; im.ImageReport != nil {
		return im.GetStatus(), im.GetImageId() != "", true
	}
	if f != nil && f.Scope == diagnose.ScopeImage {
		return f.Worst, false, true
	}
	if up, tried := n.reach[registry]; tried && !up {
		return pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, false, true
	}
	if f == nil {
		return pb.ImageStatus_IMAGE_STATUS_UNSPECIFIED, false, false
	}
	switch {
	case f.Scope == diagnose.ScopeCluster:
		return f.Worst, false, true
	case f.Scope == diagnose.ScopeZone && n.zone != "" && slices.Contains(f.Zones, n.zone):
		return f.Worst, false, true
	case f.Counts[pb.ImageStatus_IMAGE_STATUS_AVAILABLE] > 0:
		return pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false, true
	}
	return pb.ImageStatus_IMAGE_STATUS_UNSPECIFIED, false, false
}
