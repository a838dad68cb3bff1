package risk

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
	"github.com/pullwatch/pullwatch/aggregator/pkg/kubewatch"
	"github.com/pullwatch/pullwatch/aggregator/pkg/nodeimage"
)

// BenchmarkAssess: 1,000 nodes × 50 images (one registry, down from every
// node: the worst case, every container assessed as failing), 25
// Deployments × 2 containers with one pod per node each (50,000
// containers). Run: cd aggregator && go test -run '^$' -bench Assess -benchmem ./pkg/risk/
func BenchmarkAssess(b *testing.B) {
	const nodes, images, deployments = 1000, 50, 25
	in := make([]diagnose.Node, nodes)
	for i := range in {
		n := diagnose.Node{Name: fmt.Sprintf("node-%04d", i)}
		for j := range images {
			n.Images = append(n.Images, nodeimage.Of(img(fmt.Sprintf("reg.example:5000/app-%02d:v1", j), unreachable, j%2 == 0)))
		}
		in[i] = n
	}
	r := diagnose.Diagnose(in)
	var pods []kubewatch.PodFacts
	for d := range deployments {
		for i := range nodes {
			pods = append(pods, kubewatch.PodFacts{Namespace: "shop", Name: fmt.Sprintf("dep-%02d-%04d", d, i), Node: in[i].Name, Kind: "deployment",
				Workload: fmt.Sprintf("dep-%02d", d), Containers: []kubewatch.PodContainer{
					{Name: "app", Image: fmt.Sprintf("reg.example:5000/app-%02d:v1", 2*d), PullPolicy: corev1.PullIfNotPresent},
					{Name: "sidecar", Image: fmt.Sprintf("reg.example:5000/app-%02d:v1", 2*d+1), PullPolicy: corev1.PullAlways},
				}})
		}
	}
	b.ReportAllocs()
	var a *Assessment
	for b.Loop() {
		a = Assess(r, pods, nil)
	}
	b.ReportMetric(float64(len(a.AtRisk)), "at_risk")
	b.ReportMetric(float64(len(a.Workloads)), "workloads")
	_ = pb.ImageStatus_IMAGE_STATUS_UNKNOWN
}
