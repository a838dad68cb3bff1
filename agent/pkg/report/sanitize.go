package report

import (
	"net/url"
	"regexp"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Sanitized returns the report as it may leave the agent. Much of it comes
// from registries (status lines, headers, token realms, digests) and from
// node files (hosts.toml, registries.conf, config.toml), none of which the
// agent controls: every string is made valid UTF-8 and clipped to the
// report's limits (pullwatch.v1's limits.go, which the aggregator enforces),
// lists are cut to their limits, userinfo is stripped from URLs (a mirror
// configured as https://user:password@mirror/ must not put the password on
// the status page), and a registry digest too long to be one is dropped.
// So one hostile registry can neither make the report unencodable nor get
// the node's report refused. n itself is not changed.
func (n Node) Sanitized() Node {
	out := n
	out.Runtime = Runtime{
		Name:       pb.Clip(n.Runtime.Name, pb.MaxShort),
		Version:    pb.Clip(n.Runtime.Version, pb.MaxShort),
		APIVersion: pb.Clip(n.Runtime.APIVersion, pb.MaxShort),
		Endpoint:   pb.Clip(n.Runtime.Endpoint, pb.MaxURL),
	}
	out.Platform.OS = pb.Clip(n.Platform.OS, pb.MaxShort)
	out.Platform.Architecture = pb.Clip(n.Platform.Architecture, pb.MaxShort)
	out.Platform.Variant = pb.Clip(n.Platform.Variant, pb.MaxShort)
	if n.Labels != nil {
		out.Labels = make(map[string]string, len(n.Labels))
		for k, v := range n.Labels {
			if len(out.Labels) == pb.MaxLabels {
				break
			}
			out.Labels[pb.Clip(k, pb.MaxLabelKey)] = pb.Clip(v, pb.MaxShort)
		}
	}
	if n.Images != nil {
		out.Images = make([]Image, len(n.Images))
		for i, im := range n.Images {
			out.Images[i] = im.sanitized()
		}
	}
	return out
}

func (im Image) sanitized() Image {
	out := im
	out.Image = pb.Clip(im.Image, pb.MaxImageRef)
	out.Registry = pb.Clip(im.Registry, pb.MaxShort)
	out.Digest = pb.Clip(im.Digest, pb.MaxShort)
	out.ImageID = pb.Clip(im.ImageID, pb.MaxShort)
	if im.RepoDigests != nil {
		rd := im.RepoDigests[:min(len(im.RepoDigests), pb.MaxRepoDigests)]
		out.RepoDigests = make([]string, len(rd))
		for i, d := range rd {
			out.RepoDigests[i] = pb.Clip(d, pb.MaxImageRef)
		}
	}
	out.Outcome = im.Outcome.Sanitized()
	if im.Pods != nil {
		pods := im.Pods[:min(len(im.Pods), pb.MaxContainers)]
		out.Pods = make([]Pod, len(pods))
		for i, p := range pods {
			out.Pods[i] = Pod{
				Namespace:   pb.Clip(p.Namespace, pb.MaxShort),
				Pod:         pb.Clip(p.Pod, pb.MaxShort),
				PodUID:      pb.Clip(p.PodUID, pb.MaxShort),
				Container:   pb.Clip(p.Container, pb.MaxShort),
				ContainerID: pb.Clip(p.ContainerID, pb.MaxShort),
				State:       pb.Clip(p.State, pb.MaxShort),
			}
		}
	}
	return out
}

// Sanitized returns the outcome as it may enter a report (see
// Node.Sanitized): reasons and URLs valid UTF-8, clipped, without
// userinfo; a registry digest too long to be one dropped.
func (o Outcome) Sanitized() Outcome {
	out := o
	out.Reason = Text(o.Reason, pb.MaxReason)
	out.CredentialSource = pb.Clip(o.CredentialSource, pb.MaxShort)
	if !pb.Fits(o.RegistryDigest, pb.MaxShort) {
		// Not a digest (the prober keeps only digests that parse, with
		// go-digest); a clipped one would be a wrong one.
		out.RegistryDigest, out.Drifted = "", false
	}
	if o.Endpoints != nil {
		eps := o.Endpoints[:min(len(o.Endpoints), pb.MaxEndpoints)]
		out.Endpoints = make([]Endpoint, len(eps))
		for i, e := range eps {
			e.URL = pb.Clip(RedactURL(e.URL), pb.MaxURL)
			e.Reason = Text(e.Reason, pb.MaxReason)
			e.RateLimitRemaining = pb.Clip(e.RateLimitRemaining, pb.MaxShort)
			out.Endpoints[i] = e
		}
	}
	return out
}

// userinfo matches the user[:password]@ of a URL inside free text.
var userinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s"'<>]+@`)

// Text returns free text from a registry or a node file as it may enter a
// report: userinfo of any URL in it removed, valid UTF-8, at most limit
// bytes.
func Text(s string, limit int) string {
	return pb.Clip(userinfo.ReplaceAllString(pb.Clip(s, 4*limit), "$1"), limit)
}

// RedactURL returns raw without its userinfo (user and password both: a
// user name can be a token too). Text that is not a URL is returned with
// any userinfo removed all the same.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return userinfo.ReplaceAllString(raw, "$1")
	}
	u.User = nil
	return u.String()
}
