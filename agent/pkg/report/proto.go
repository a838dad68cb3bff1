package report

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Snapshot converts the node's report to the wire snapshot. Statuses and
// roles are the wire's enums already; an UNSPECIFIED one, which the
// aggregator refuses, can only come from a bug. Every string is sanitized
// first (Sanitized), so the snapshot always encodes and fits the limits.
func (n Node) Snapshot(agentVersion string, interval time.Duration) *pb.NodeSnapshot {
	n = n.Sanitized()
	s := &pb.NodeSnapshot{
		Node: &pb.Node{
			Name:         n.Node,
			AgentVersion: pb.Clip(agentVersion, pb.MaxShort),
			Os:           n.Platform.OS,
			Architecture: n.Platform.Architecture,
			Variant:      n.Platform.Variant,
			Labels:       n.Labels,
			Runtime: &pb.Runtime{
				Name:       n.Runtime.Name,
				Version:    n.Runtime.Version,
				ApiVersion: n.Runtime.APIVersion,
				Endpoint:   n.Runtime.Endpoint,
			},
		},
		ObservedAt: timestamppb.New(n.ObservedAt),
		Interval:   durationpb.New(interval),
	}
	for _, im := range n.Images {
		s.Images = append(s.Images, im.proto())
	}
	return s
}

func (im Image) proto() *pb.ImageReport {
	r := &pb.ImageReport{
		Image:            im.Image,
		ImageId:          im.ImageID,
		RepoDigests:      im.RepoDigests,
		Digest:           im.Digest,
		InUse:            im.InUse,
		Status:           im.Status,
		Reason:           im.Reason,
		Registry:         im.Registry,
		Degraded:         im.Degraded,
		Drifted:          im.Drifted,
		RegistryDigest:   im.RegistryDigest,
		CredentialSource: im.CredentialSource,
		Delegated:        im.Delegated,
	}
	if im.CheckedAt != nil {
		r.CheckedAt = timestamppb.New(*im.CheckedAt)
	}
	if im.StatusSince != nil {
		r.StatusSince = timestamppb.New(*im.StatusSince)
	}
	for _, e := range im.Endpoints {
		r.Endpoints = append(r.Endpoints, e.proto())
	}
	for _, p := range im.Pods {
		r.Containers = append(r.Containers, &pb.ContainerRef{
			Namespace:   p.Namespace,
			Pod:         p.Pod,
			PodUid:      p.PodUID,
			Container:   p.Container,
			ContainerId: p.ContainerID,
			State:       p.State,
		})
	}
	return r
}

func (e Endpoint) proto() *pb.EndpointResult {
	r := &pb.EndpointResult{
		Url:                e.URL,
		Role:               e.Role,
		Status:             e.Status,
		Reason:             e.Reason,
		Latency:            durationpb.New(time.Duration(e.LatencySeconds * float64(time.Second))),
		CheckedAt:          timestamppb.New(e.CheckedAt),
		HttpStatus:         int32(e.HTTPStatus),
		Skipped:            e.Skipped,
		RatelimitRemaining: e.RateLimitRemaining,
	}
	if e.RetryAfterSeconds > 0 {
		r.RetryAfter = durationpb.New(time.Duration(e.RetryAfterSeconds * float64(time.Second)))
	}
	return r
}
