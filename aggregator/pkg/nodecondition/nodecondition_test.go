package nodecondition

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
)

// The API side (strategic merge patch of nodes/status, Events, RBAC) is
// tested on a real kube-apiserver in e2e/risk; this covers the verdicts
// and when an Event is due.
func TestJudge(t *testing.T) {
	up := diagnose.NodeEndpoint{EndpointKey: diagnose.EndpointKey{Registry: "a.example", URL: "https://mirror"}, Up: true}
	down := diagnose.NodeEndpoint{EndpointKey: diagnose.EndpointKey{Registry: "a.example", URL: "https://a.example"}, Reason: "dial tcp: refused"}
	gone := diagnose.NodeEndpoint{EndpointKey: diagnose.EndpointKey{Registry: "b.example", URL: "https://b.example"}, Reason: "i/o timeout"}
	if v := judge([]diagnose.NodeEndpoint{up, down}); !v.reachable {
		t.Errorf("a registry with one answering endpoint (the mirror) is reachable: %+v", v)
	}
	v := judge([]diagnose.NodeEndpoint{up, down, gone})
	if v.reachable || v.message != "no endpoint answers this node for: b.example (i/o timeout) (pullwatch)" {
		t.Errorf("judge = %+v", v)
	}
}

func TestApplyEvents(t *testing.T) {
	ctx := context.Background()
	kube := kubefake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-n1"},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}})
	w := New(kube, slog.New(slog.NewTextHandler(io.Discard, nil)))
	events := func() int {
		l, err := kube.CoreV1().Events(eventNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Items)
	}
	cond := func() (ready, reachable corev1.ConditionStatus) {
		n, err := kube.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range n.Status.Conditions {
			switch c.Type {
			case corev1.NodeReady:
				ready = c.Status
			case Type:
				reachable = c.Status
			}
		}
		return
	}
	steps := []struct {
		v          verdict
		wantStatus corev1.ConditionStatus
		wantEvents int
	}{
		{verdict{reachable: true, message: "ok"}, corev1.ConditionTrue, 0}, // first True: no change worth an Event
		{verdict{reachable: true, message: "ok"}, corev1.ConditionTrue, 0},
		{verdict{message: "down"}, corev1.ConditionFalse, 1},
		{verdict{message: "down, other reason"}, corev1.ConditionFalse, 1}, // message only: no Event
		{verdict{reachable: true, message: "ok"}, corev1.ConditionTrue, 2},
	}
	for i, s := range steps {
		if err := w.apply(ctx, "n1", s.v); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		ready, got := cond()
		if got != s.wantStatus || ready != corev1.ConditionTrue {
			t.Errorf("step %d: RegistryReachable %q (Ready %q), want %q and Ready kept", i, got, ready, s.wantStatus)
		}
		if n := events(); n != s.wantEvents {
			t.Errorf("step %d: %d events, want %d", i, n, s.wantEvents)
		}
	}
}

// TestRemove: only the RegistryReachable condition goes, from every Node
// that has it; the kubelet's stay. (On a real API server: the chart's
// pre-delete hook in e2e/installed.)
func TestRemove(t *testing.T) {
	ctx := context.Background()
	node := func(name string, conds ...corev1.NodeConditionType) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		for _, c := range conds {
			n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: c, Status: corev1.ConditionTrue})
		}
		return n
	}
	kube := kubefake.NewClientset(node("n1", corev1.NodeReady, Type, corev1.NodeMemoryPressure), node("n2", corev1.NodeReady))
	removed, err := Remove(ctx, kube, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != "n1" {
		t.Errorf("removed from %v, want [n1]", removed)
	}
	for name, want := range map[string][]corev1.NodeConditionType{"n1": {corev1.NodeReady, corev1.NodeMemoryPressure}, "n2": {corev1.NodeReady}} {
		n, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var got []corev1.NodeConditionType
		for _, c := range n.Status.Conditions {
			got = append(got, c.Type)
		}
		if !slices.Equal(got, want) {
			t.Errorf("node %s conditions %v, want %v", name, got, want)
		}
	}
}
