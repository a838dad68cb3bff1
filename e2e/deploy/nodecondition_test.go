package deploy_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

// TestNodeConditionAdmissionPolicy: the node-condition component's example
// ValidatingAdmissionPolicy, applied as shipped to a real kube-apiserver
// with the component's RBAC: the aggregator's ServiceAccount may patch its
// RegistryReachable condition (as aggregator/pkg/nodecondition does: a
// strategic merge patch of that one condition), and nothing else RBAC's
// `patch nodes/status` would let it: another condition, a label, an
// address. Other users are not held to it.
func TestNodeConditionAdmissionPolicy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cluster := lab.Kube(ctx, t)
	lab.ApplyShippedRBAC(ctx, t, cluster, "aggregator.yaml", "components/node-condition/rbac.yaml")
	const node = "vap-node"
	if _, err := cluster.CreateNode(ctx, kubeapi.NodeOptions{Name: node}); err != nil {
		t.Fatal(err)
	}
	agg, err := cluster.ClientFor("system:serviceaccount:pullwatch:pullwatch-aggregator",
		[]string{"system:serviceaccounts", "system:serviceaccounts:pullwatch", "system:authenticated"})
	if err != nil {
		t.Fatal(err)
	}
	admin := cluster.Client()

	// RBAC alone (patch on nodes/status) lets it change a label and the
	// kubelet's Ready: what the policy is for. Dry runs, changing nothing.
	dry := metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}
	if n, err := agg.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType,
		[]byte(`{"metadata":{"labels":{"pullwatch.io/aggregator":"true"}},"status":{"conditions":[{"type":"Ready","status":"False"}]}}`), dry, "status"); err != nil {
		t.Errorf("without the policy, the aggregator's patch of a label and Ready: %v", err)
	} else {
		ready := ""
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				ready = string(c.Status)
			}
		}
		t.Logf("without the policy, RBAC lets the aggregator set a label (%q) and Ready=%s through nodes/status", n.Labels["pullwatch.io/aggregator"], ready)
	}

	condition := func(typ corev1.NodeConditionType, st corev1.ConditionStatus) []byte {
		now := metav1.NewTime(time.Now())
		b, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{
			{Type: typ, Status: st, Reason: "PullwatchE2E", LastHeartbeatTime: now, LastTransitionTime: now}}}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	patchStatus := func(patch []byte) error {
		_, err := agg.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
		return err
	}
	// The policy takes effect once the API server has loaded it: the
	// first refusal of a dry run (which changes nothing, so that every
	// patch below still finds the node as registered).
	readyFalse := condition(corev1.NodeReady, corev1.ConditionFalse)
	lab.ApplyAdmissionPolicy(ctx, t, cluster, "components/node-condition/admission-policy.example.yaml", func() error {
		_, err := agg.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, readyFalse, dry, "status")
		if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
			return &notRefused{err}
		}
		return nil
	})

	for _, tc := range []struct {
		name  string
		patch []byte
	}{
		{"another condition (Ready)", readyFalse},
		{"a label through the status subresource", []byte(`{"metadata":{"labels":{"pullwatch.io/aggregator":"true"}}}`)},
		{"the node's addresses", []byte(`{"status":{"addresses":[{"type":"InternalIP","address":"10.9.9.9"}]}}`)},
		{"RegistryReachable and Ready together", []byte(`{"status":{"conditions":[{"type":"RegistryReachable","status":"True"},{"type":"Ready","status":"False"}]}}`)},
	} {
		if err := patchStatus(tc.patch); !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
			t.Errorf("%s: the aggregator's patch was not refused: %v", tc.name, err)
		} else {
			t.Logf("%s: refused: %v", tc.name, err)
		}
	}
	for _, st := range []corev1.ConditionStatus{corev1.ConditionFalse, corev1.ConditionTrue} {
		if err := patchStatus(condition("RegistryReachable", st)); err != nil {
			t.Errorf("RegistryReachable=%s: the aggregator's own patch was refused: %v", st, err)
		}
	}
	n, err := admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
			t.Errorf("Ready is %s after the refused patches", c.Status)
		}
	}
	if _, ok := n.Labels["pullwatch.io/aggregator"]; ok {
		t.Error("the refused label is on the node")
	}
	// Another user (the admin here; the kubelet in a cluster) is not
	// held to it.
	if _, err := admin.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, readyFalse, metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("the admin's patch of Ready was refused: %v", err)
	}
}

type notRefused struct{ err error }

func (e *notRefused) Error() string {
	if e.err == nil {
		return "accepted"
	}
	return "not refused by the policy: " + e.err.Error()
}
