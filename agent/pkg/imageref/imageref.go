// Package imageref turns the image strings a container runtime reports into
// the normalized references pullwatch probes and reports.
//
// Parsing and normalization are github.com/distribution/reference's, the
// same rules the kubelet and containerd apply (docker.io/library/ prefix for
// short names, :latest when no tag or digest is given).
package imageref

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Ref is a parsed, normalized image reference.
type Ref struct {
	named reference.Named
}

// Parse normalizes s. It refuses image ids ("sha256:<hex>" or a bare
// 64-hex id), which name an image in the runtime's store, not in a registry.
func Parse(s string) (Ref, error) {
	if s == "" {
		return Ref{}, fmt.Errorf("empty image reference")
	}
	if IsImageID(s) {
		return Ref{}, fmt.Errorf("image reference %q is a runtime image id, not a registry reference", s)
	}
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return Ref{}, fmt.Errorf("parse image reference %q: %w", s, err)
	}
	return Ref{named: reference.TagNameOnly(named)}, nil
}

// IsImageID reports whether s is a runtime image id rather than a name.
func IsImageID(s string) bool {
	if strings.HasPrefix(s, "sha256:") {
		return digest.Digest(s).Validate() == nil
	}
	return len(s) == 64 && digest.NewDigestFromEncoded(digest.SHA256, s).Validate() == nil
}

// String is the fully normalized reference,
// e.g. docker.io/library/nginx:latest or 127.0.0.1:5000/app@sha256:....
func (r Ref) String() string { return r.named.String() }

// Registry is the registry host as the runtime addresses it: docker.io,
// ghcr.io, 127.0.0.1:5000.
func (r Ref) Registry() string { return reference.Domain(r.named) }

// Repository is the repository path inside the registry: library/nginx.
func (r Ref) Repository() string { return reference.Path(r.named) }

// Name is registry plus repository: docker.io/library/nginx.
func (r Ref) Name() string { return r.named.Name() }

// Tag is the tag, "" for a digest-only reference.
func (r Ref) Tag() string {
	if t, ok := r.named.(reference.Tagged); ok {
		return t.Tag()
	}
	return ""
}

// Digest is the pinned digest, "" for a tag-only reference.
func (r Ref) Digest() string {
	if d, ok := r.named.(reference.Digested); ok {
		return d.Digest().String()
	}
	return ""
}

// ManifestReference is what goes after /manifests/ in a registry request:
// the digest when pinned (that is what the runtime pulls), else the tag.
func (r Ref) ManifestReference() string {
	if d := r.Digest(); d != "" {
		return d
	}
	return r.Tag()
}

// DigestFor returns the manifest digest among repoDigests
// (name@sha256:... strings as CRI reports them) that belongs to r's
// repository, or "" if none does.
func (r Ref) DigestFor(repoDigests []string) string {
	for _, rd := range repoDigests {
		named, err := reference.ParseNormalizedNamed(rd)
		if err != nil {
			continue
		}
		if d, ok := named.(reference.Digested); ok && named.Name() == r.Name() {
			return d.Digest().String()
		}
	}
	return ""
}

// APIHost returns the host the runtime sends registry API requests to for a
// registry host as an image or a docker config names it, and whether that
// registry is Docker Hub: docker.io and its legacy name index.docker.io
// are served at registry-1.docker.io (containerd's and CRI-O's mapping);
// every other host is served at itself.
func APIHost(host string) (apiHost string, dockerHub bool) {
	switch host {
	case "docker.io", "index.docker.io":
		return "registry-1.docker.io", true
	}
	return host, false
}
