package deploy_test

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// TestAggregatorReplicas: two replicas on different nodes when possible,
// at most one taken down voluntarily, and the agents stream to every
// ready replica (the kubernetes:/// form of --aggregator; a HOST:PORT
// through the Service would reach only one).
func TestAggregatorReplicas(t *testing.T) {
	d := only[*appsv1.Deployment](t, aggregatorName)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("aggregator replicas %v, want 2", d.Spec.Replicas)
	}
	aff := d.Spec.Template.Spec.Affinity
	if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatalf("aggregator pod anti-affinity %+v, want one preferred term", aff)
	}
	if len(aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 0 {
		t.Error("required anti-affinity: a one-node cluster could not run both replicas")
	}
	term := aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
	if term.TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("anti-affinity topology key %q, want kubernetes.io/hostname", term.TopologyKey)
	}
	sel, err := metav1.LabelSelectorAsSelector(term.LabelSelector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("anti-affinity selector %v does not select the aggregator's pods %v", term.LabelSelector, d.Spec.Template.Labels)
	}

	pdb := only[*policyv1.PodDisruptionBudget](t, aggregatorName)
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget maxUnavailable %v minAvailable %v, want maxUnavailable 1", pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
	}
	psel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || !psel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("PodDisruptionBudget selector %v does not select the aggregator's pods", pdb.Spec.Selector)
	}
}
