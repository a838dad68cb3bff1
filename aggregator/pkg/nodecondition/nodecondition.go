// Package nodecondition writes what the aggregator knows about each node's
// path to its registries where `kubectl describe node` shows it: a
// RegistryReachable condition on the Node (False while some registry the
// node pulls from has no endpoint that answers it) and an Event on each
// change. It is off unless --node-condition is set, and then needs patch
// on nodes/status and create on events (deploy/components/node-condition).
// Remove takes the condition off every Node again (uninstall).
package nodecondition

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// Type is the condition's type on the Node.
const Type = corev1.NodeConditionType("RegistryReachable")

// The condition's reasons, also the Events' reasons.
const (
	ReasonReachable   = "RegistriesReachable"
	ReasonUnreachable = "RegistryUnreachable"
)

// eventNamespace is where Events about cluster-scoped Nodes go, as the
// kubelet's do.
const eventNamespace = metav1.NamespaceDefault

// Component is the Events' source.
const Component = "pullwatch-aggregator"

// verdict is the condition wanted for one node.
type verdict struct {
	reachable bool
	message   string
}

// Writer keeps each live node's condition in step with the diagnosis.
type Writer struct {
	kube kubernetes.Interface
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	want    map[string]verdict
	changed chan struct{}

	// written is what this process last wrote (or found) per node.
	written map[string]verdict
}

// New returns a Writer; Run applies what Observe hands it.
func New(kube kubernetes.Interface, log *slog.Logger) *Writer {
	return &Writer{kube: kube, log: log, now: time.Now, changed: make(chan struct{}, 1), written: map[string]verdict{}}
}

// Observe takes a diagnosis (analyzer.Options.OnAnalysis). It only
// records the verdicts; Run talks to the API, so an analysis never waits
// on it.
func (w *Writer) Observe(_ context.Context, r *diagnose.Report) {
	want := map[string]verdict{}
	for i := range r.Nodes {
		n := &r.Nodes[i]
		if !n.Live() {
			continue
		}
		want[n.Name] = judge(r.NodeEndpoints[i])
	}
	w.mu.Lock()
	w.want = want
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// judge: reachable unless some registry has endpoints the node tried and
// none of them answered.
func judge(eps []diagnose.NodeEndpoint) verdict {
	up := map[string]bool{}
	reason := map[string]string{}
	for _, ep := range eps {
		up[ep.Registry] = up[ep.Registry] || ep.Up
		if !ep.Up && reason[ep.Registry] == "" {
			reason[ep.Registry] = ep.Reason
		}
	}
	var down []string
	for reg, ok := range up {
		if !ok {
			down = append(down, reg)
		}
	}
	if len(down) == 0 {
		return verdict{reachable: true, message: "every registry this node pulls from answers it (pullwatch)"}
	}
	slices.Sort(down)
	parts := make([]string, len(down))
	for i, reg := range down {
		parts[i] = reg
		if reason[reg] != "" {
			parts[i] += " (" + reason[reg] + ")"
		}
	}
	return verdict{message: "no endpoint answers this node for: " + strings.Join(parts, "; ") + " (pullwatch)"}
}

// Run applies the verdicts until ctx ends.
func (w *Writer) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.changed:
		}
		w.mu.Lock()
		want := w.want
		w.mu.Unlock()
		names := make([]string, 0, len(want))
		for name := range want {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if ctx.Err() != nil {
				return
			}
			if err := w.apply(ctx, name, want[name]); err != nil {
				w.log.WarnContext(ctx, "node condition not written", "node", name, logging.ErrKey, err)
			}
		}
	}
}

// apply writes node name's condition when it differs from what was last
// written (read from the Node the first time), and emits an Event when
// the status changes.
func (w *Writer) apply(ctx context.Context, name string, v verdict) error {
	last, known := w.written[name]
	if known && last == v {
		return nil
	}
	node, err := w.kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node %s: %w", name, err)
	}
	var current *corev1.NodeCondition
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == Type {
			current = &node.Status.Conditions[i]
		}
	}
	status, reason := corev1.ConditionTrue, ReasonReachable
	if !v.reachable {
		status, reason = corev1.ConditionFalse, ReasonUnreachable
	}
	if current != nil && current.Status == status && current.Message == v.message {
		w.written[name] = v
		return nil
	}
	now := metav1.NewTime(w.now())
	cond := corev1.NodeCondition{Type: Type, Status: status, Reason: reason, Message: v.message, LastHeartbeatTime: now, LastTransitionTime: now}
	transition := current == nil || current.Status != status
	if !transition {
		cond.LastTransitionTime = current.LastTransitionTime
	}
	// A strategic merge patch on conditions (merge key: type) touches
	// only this condition, never the kubelet's.
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return fmt.Errorf("encode condition patch for node %s: %w", name, err)
	}
	if _, err := w.kube.CoreV1().Nodes().PatchStatus(ctx, name, patch); err != nil {
		return fmt.Errorf("patch status of node %s: %w", name, err)
	}
	w.written[name] = v
	// An Event for each change of status; the first True on a node that
	// never had the condition is no change worth one.
	if transition && (current != nil || !v.reachable) {
		w.log.InfoContext(ctx, "node condition changed", "node", name, "condition", string(Type), "status", string(status), "message", v.message)
		if err := w.event(ctx, node, cond); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) event(ctx context.Context, node *corev1.Node, cond corev1.NodeCondition) error {
	typ := corev1.EventTypeNormal
	if cond.Status != corev1.ConditionTrue {
		typ = corev1.EventTypeWarning
	}
	ev := &corev1.Event{
		// Named as client-go's recorder names them: object name and a
		// nanosecond timestamp in hex.
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", node.Name, w.now().UnixNano()), Namespace: eventNamespace},
		InvolvedObject: corev1.ObjectReference{
			Kind: "Node", APIVersion: "v1", Name: node.Name, UID: types.UID(node.UID),
		},
		Reason:         cond.Reason,
		Message:        cond.Message,
		Type:           typ,
		Source:         corev1.EventSource{Component: Component},
		FirstTimestamp: cond.LastTransitionTime,
		LastTimestamp:  cond.LastTransitionTime,
		Count:          1,
	}
	if _, err := w.kube.CoreV1().Events(eventNamespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("event for node %s: %w", node.Name, err)
	}
	return nil
}

// removePatch deletes the condition of type Type from a Node's status: a
// strategic merge patch (conditions merge on type) that touches no other
// condition.
var removePatch = []byte(`{"status":{"conditions":[{"type":"` + string(Type) + `","$patch":"delete"}]}}`)

// Remove deletes the RegistryReachable condition from every Node that has
// it (pullwatch-aggregator remove-node-condition, the chart's pre-delete
// hook) and returns the names of those Nodes. Nothing must be writing it
// meanwhile: stop the aggregator first (StopDeployment).
func Remove(ctx context.Context, kube kubernetes.Interface, log *slog.Logger) ([]string, error) {
	nodes, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var removed []string
	var errs []error
	for _, n := range nodes.Items {
		if !slices.ContainsFunc(n.Status.Conditions, func(c corev1.NodeCondition) bool { return c.Type == Type }) {
			continue
		}
		if _, err := kube.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, removePatch, metav1.PatchOptions{}, "status"); err != nil {
			errs = append(errs, fmt.Errorf("remove %s from node %s: %w", Type, n.Name, err))
			continue
		}
		log.InfoContext(ctx, "node condition removed", "node", n.Name, "condition", string(Type))
		removed = append(removed, n.Name)
	}
	return removed, errors.Join(errs...)
}

// StopDeployment scales the Deployment namespace/name to zero replicas and
// waits until none of its pods is left (or ctx ends), so that no
// aggregator writes the condition again after Remove. A Deployment that
// does not exist is no error.
func StopDeployment(ctx context.Context, kube kubernetes.Interface, log *slog.Logger, namespace, name string) error {
	deploys := kube.AppsV1().Deployments(namespace)
	d, err := deploys.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get deployment %s/%s: %w", namespace, name, err)
	}
	selector, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return fmt.Errorf("deployment %s/%s: selector: %w", namespace, name, err)
	}
	if _, err := deploys.Patch(ctx, name, types.MergePatchType, []byte(`{"spec":{"replicas":0}}`), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("scale deployment %s/%s to 0: %w", namespace, name, err)
	}
	log.InfoContext(ctx, "scaled to zero, waiting for its pods to go", "deployment", namespace+"/"+name)
	for {
		pods, err := kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
		if err != nil {
			return fmt.Errorf("list pods of deployment %s/%s: %w", namespace, name, err)
		}
		if len(pods.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("deployment %s/%s: %d pods still there: %w", namespace, name, len(pods.Items), ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
