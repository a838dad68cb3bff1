package risk

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
	"github.com/pullwatch/pullwatch/aggregator/pkg/kubewatch"
	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
)

const (
	available   = pb.ImageStatus_IMAGE_STATUS_AVAILABLE
	unreachable = pb.ImageStatus_IMAGE_STATUS_UNREACHABLE
	absent      = pb.ImageStatus_IMAGE_STATUS_ABSENT
)

func img(ref string, st pb.ImageStatus, cached bool) *pb.ImageReport {
	im := &pb.ImageReport{Image: ref, Registry: "reg.example:5000", Status: st,
		Endpoints: []*pb.EndpointResult{{Url: "https://reg.example:5000", Role: pb.EndpointRole_ENDPOINT_ROLE_UPSTREAM, Status: st}}}
	if st == available || st == absent {
		im.Endpoints[0].HttpStatus = 200
		if st == absent {
			im.Endpoints[0].HttpStatus = 404
		}
	}
	if cached {
		im.ImageId = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	}
	return im
}

func pod(ns, name, node string, containers ...kubewatch.PodContainer) kubewatch.PodFacts {
	return kubewatch.PodFacts{Namespace: ns, Name: name, Node: node, Kind: "deployment", Workload: name, Containers: containers}
}

func TestAssess(t *testing.T) {
	const app, latest, gone = "reg.example:5000/app:v1", "reg.example:5000/app:latest", "reg.example:5000/gone:v1"
	// The registry is down from node-a and node-b; node-c reaches it.
	nodes := []diagnose.Node{
		{Name: "node-a", Images: nodeimage.All(img(app, unreachable, true), img(latest, unreachable, true))},
		{Name: "node-b", Images: nodeimage.All(img(app, unreachable, false))},
		{Name: "node-c", Images: nodeimage.All(img(gone, absent, true), img("reg.example:5000/other:v1", available, true))},
	}
	r := diagnose.Diagnose(nodes)
	pods := []kubewatch.PodFacts{
		pod("default", "cached-ifnotpresent", "node-a", kubewatch.PodContainer{Name: "c", Image: app, PullPolicy: corev1.PullIfNotPresent}),
		pod("default", "cached-always", "node-a", kubewatch.PodContainer{Name: "c", Image: app, PullPolicy: corev1.PullAlways}),
		pod("default", "latest-default", "node-a", kubewatch.PodContainer{Name: "c", Image: latest}),
		pod("default", "not-cached", "node-b", kubewatch.PodContainer{Name: "c", Image: app, PullPolicy: corev1.PullIfNotPresent}),
		pod("default", "gone-cached", "node-c", kubewatch.PodContainer{Name: "c", Image: gone, PullPolicy: corev1.PullIfNotPresent}),
	}
	a := Assess(r, pods, nil)
	got := map[string]Reason{}
	for _, c := range a.AtRisk {
		got[c.Pod] = c.Reason
	}
	want := map[string]Reason{"cached-always": PullAlways, "latest-default": PullAlways, "not-cached": NotCached}
	if len(got) != len(want) {
		t.Errorf("at risk = %v, want %v", got, want)
	}
	for p, r := range want {
		if got[p] != r {
			t.Errorf("pod %s: reason %q, want %q", p, got[p], r)
		}
	}
	if len(a.Safe) != 2 {
		t.Errorf("safe = %+v, want cached-ifnotpresent and gone-cached", a.Safe)
	}
	// A new replica: cached-ifnotpresent's image fails on node-a only if
	// not cached (it is), on node-b (not cached, unreachable); on node-c
	// the registry answers and others pull app? No node has it available,
	// and node-c reaches the registry: unknown there.
	for _, w := range a.Workloads {
		switch w.Name {
		case "cached-ifnotpresent":
			if len(w.Nodes) != 1 || w.Nodes[0] != "node-b" {
				t.Errorf("workload %s: nodes %v, want [node-b]", w.Name, w.Nodes)
			}
		case "gone-cached":
			// absent is the registry's answer: every node without the
			// image in its cache fails.
			if len(w.Nodes) != 2 {
				t.Errorf("workload %s: nodes %v, want node-a and node-b", w.Name, w.Nodes)
			}
		}
	}
}

func TestEffectivePullPolicy(t *testing.T) {
	for spec, want := range map[string]corev1.PullPolicy{
		"nginx":                     corev1.PullAlways,
		"nginx:latest":              corev1.PullAlways,
		"nginx:1.27":                corev1.PullIfNotPresent,
		"nginx@sha256:" + hex64:     corev1.PullIfNotPresent,
		"reg.example:5000/app":      corev1.PullAlways,
		"reg.example:5000/app:v1.2": corev1.PullIfNotPresent,
	} {
		if got := EffectivePullPolicy(spec, ""); got != want {
			t.Errorf("EffectivePullPolicy(%q) = %s, want %s", spec, got, want)
		}
	}
	if got := EffectivePullPolicy("nginx", corev1.PullNever); got != corev1.PullNever {
		t.Errorf("explicit Never: %s", got)
	}
}

const hex64 = "1111111111111111111111111111111111111111111111111111111111111111"

type onlyNamespace string

func (o onlyNamespace) Image(string) bool          { return true }
func (o onlyNamespace) Namespace(name string) bool { return name == string(o) }

func TestAssessFilter(t *testing.T) {
	r := diagnose.Diagnose([]diagnose.Node{{Name: "n", Images: nodeimage.All(img("reg.example:5000/app:v1", unreachable, false))}})
	pods := []kubewatch.PodFacts{
		pod("a", "p", "n", kubewatch.PodContainer{Name: "c", Image: "reg.example:5000/app:v1"}),
		pod("b", "p", "n", kubewatch.PodContainer{Name: "c", Image: "reg.example:5000/app:v1"}),
	}
	a := Assess(r, pods, onlyNamespace("a"))
	if len(a.AtRisk) != 1 || a.AtRisk[0].Namespace != "a" || len(a.Workloads) != 1 {
		t.Errorf("filtered: %+v", a)
	}
}
