package ingest

import pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

// compact drops from validated image reports, before they are stored,
// what no reader of the state (diagnosis, metrics, status page, risk,
// sharding) looks at: the image's repo digests and each container's
// container id. The pod UID stays: compat series count a container only
// for a pod the API has on the reporting node with that UID
// (metrics.Placement). The state keeps every node's reports; at 5,000
// nodes × 100 images these strings and slices are some 40 MB of it
// (docs/benchmarks.md).
func compact(images []*pullwatchv1.ImageReport) {
	for _, im := range images {
		im.RepoDigests = nil
		for _, c := range im.GetContainers() {
			c.ContainerId = ""
		}
	}
}

// compactMessage compacts the images a message brings.
func compactMessage(msg *pullwatchv1.AgentMessage) {
	compact(msg.GetSnapshot().GetImages())
	compact(msg.GetUpdate().GetUpserts())
}
