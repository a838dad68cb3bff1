package shard

import (
	"unique"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// intern replaces the strings that every node holding an image repeats —
// reference, ids and digests, registry, reasons, credential source,
// endpoint URLs, container namespaces and states — with one canonical copy
// (package unique), before the report is stored: 5,000 nodes with the same
// 2,000 images then keep about 2,000 copies of each, not 500,000. The
// report has not been applied yet, so changing it is the ingest path's
// right (see state.Store).
func intern(im *pb.ImageReport) {
	im.Image = u(im.Image)
	im.ImageId = u(im.ImageId)
	im.Digest = u(im.Digest)
	im.Reason = u(im.Reason)
	im.Registry = u(im.Registry)
	im.RegistryDigest = u(im.RegistryDigest)
	im.CredentialSource = u(im.CredentialSource)
	for i, d := range im.RepoDigests {
		im.RepoDigests[i] = u(d)
	}
	for _, e := range im.Endpoints {
		e.Url = u(e.Url)
		e.Reason = u(e.Reason)
	}
	for _, c := range im.Containers {
		c.Namespace = u(c.Namespace)
		c.Container = u(c.Container)
		c.State = u(c.State)
	}
}

func u(s string) string {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}
