package agentcheck

import "github.com/pullwatch/pullwatch/agent/pkg/report"

// The output of `pullwatch-agent check -o json`, decoded with the agent's
// own types: package report is the one declaration of that JSON, so a
// renamed or retyped field breaks these tests at compile time. Statuses
// and roles are pullwatch.v1 enums; compare their Word() with the words
// users see ("available", "mirror").
type (
	// Report is the whole output: one node.
	Report = report.Node
	// Runtime is the node's container runtime.
	Runtime = report.Runtime
	// Image is what the agent says about one image on the node.
	Image = report.Image
	// Endpoint is one registry endpoint the agent asked (or skipped) for
	// an image, in the runtime's order.
	Endpoint = report.Endpoint
	// Pod is a container that uses the image.
	Pod = report.Pod
)

// Statuses maps each image of the report to its status word.
func Statuses(rep Report) map[string]string {
	m := map[string]string{}
	for _, im := range rep.Images {
		m[im.Image] = im.Status.Word()
	}
	return m
}
