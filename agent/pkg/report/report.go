// Package report is the agent's account of one node: the JSON that
// `pullwatch-agent check -o json` prints, the table it prints by default,
// and the pullwatch.v1 snapshot the agent streams to the aggregator.
//
// The types here are that JSON's one declaration: the agent writes them
// and the end-to-end tests read them. Statuses and roles are the
// pullwatch.v1 enums, written as their words ("available", "mirror").
package report

import (
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Node is one round's result for a node. Its JSON field names are a
// contract: extend, never rename.
type Node struct {
	Node    string  `json:"node"`
	Runtime Runtime `json:"runtime"`
	// Platform is the node's, as images are matched against it: os/arch[/variant].
	Platform ocispec.Platform `json:"platform"`
	// Labels are what --node-labels says about the node (e.g. its zone).
	Labels     map[string]string `json:"labels,omitempty"`
	ObservedAt time.Time         `json:"observed_at"`
	Images     []Image           `json:"images"`
}

// Runtime is the container runtime that answered on the node's CRI socket.
type Runtime struct {
	Name       string `json:"name"`
	Version    string `json:"version"`
	APIVersion string `json:"api_version,omitempty"`
	// Endpoint is the CRI endpoint the agent used.
	Endpoint string `json:"endpoint,omitempty"`
}

// Image is one normalized reference on the node: what the node has
// (identity, in use, pods) and what the registry answered (Outcome).
type Image struct {
	Image       string   `json:"image"`
	Registry    string   `json:"registry,omitempty"`
	Digest      string   `json:"digest,omitempty"`
	ImageID     string   `json:"image_id,omitempty"`
	RepoDigests []string `json:"repo_digests,omitempty"`
	InUse       bool     `json:"in_use"`
	// StatusSince is when the node first saw the image's current status
	// (the daemon's flap damping sets it; check leaves it unset).
	StatusSince *time.Time `json:"status_since,omitempty"`
	Outcome
	Pods []Pod `json:"pods"`
	// Delegated: probe sharding left this round's manifest HEAD to other
	// nodes; this node reached every endpoint, and the outcome is its own
	// last check's (the aggregator replaces it with the shared result).
	Delegated bool `json:"delegated,omitempty"`
}

// Outcome is what probing an image found: the runtime's view of the
// pull, as the prober returns it. In JSON its fields are the image's.
type Outcome struct {
	Status    pb.ImageStatus `json:"status"`
	Reason    string         `json:"reason,omitempty"`
	CheckedAt *time.Time     `json:"checked_at,omitempty"`
	// Degraded: available, but an endpoint the runtime would use failed.
	Degraded bool `json:"degraded"`
	// Drifted: the tag now points at another manifest (RegistryDigest)
	// than the one the node runs.
	Drifted        bool   `json:"drifted"`
	RegistryDigest string `json:"registry_digest,omitempty"`
	// CredentialSource says where the credential came from, never what it is.
	CredentialSource string     `json:"credential_source,omitempty"`
	Endpoints        []Endpoint `json:"endpoints"`
}

// Endpoint is one registry endpoint's answer for an image.
type Endpoint struct {
	URL            string          `json:"url"`
	Role           pb.EndpointRole `json:"role"`
	Status         pb.ImageStatus  `json:"status"`
	Reason         string          `json:"reason,omitempty"`
	LatencySeconds float64         `json:"latency_seconds"`
	HTTPStatus     int             `json:"http_status,omitempty"`
	CheckedAt      time.Time       `json:"checked_at"`
	// Skipped: the runtime would not ask this endpoint for this reference.
	Skipped bool `json:"skipped,omitempty"`
	// RateLimitRemaining is the registry's ratelimit-remaining header, when sent.
	RateLimitRemaining string `json:"ratelimit_remaining,omitempty"`
	// RetryAfterSeconds: after a 429, how long the registry asked to wait
	// (the prober's default backoff when it sent no Retry-After).
	RetryAfterSeconds float64 `json:"retry_after_seconds,omitempty"`
}

// Pod is one container that uses an image.
type Pod struct {
	Namespace   string `json:"namespace"`
	Pod         string `json:"pod"`
	PodUID      string `json:"pod_uid,omitempty"`
	Container   string `json:"container"`
	ContainerID string `json:"container_id,omitempty"`
	// State is the container's CRI state, e.g. CONTAINER_RUNNING.
	State string `json:"state,omitempty"`
}

// Available reports whether the image can be pulled.
func (im Image) Available() bool { return im.Status == pb.ImageStatus_IMAGE_STATUS_AVAILABLE }

// NotAvailable counts the node's images whose status is not available.
func (n Node) NotAvailable() int {
	failing := 0
	for _, im := range n.Images {
		if !im.Available() {
			failing++
		}
	}
	return failing
}

// AllAvailable reports whether every image on the node is available: the
// exit status of `check`.
func (n Node) AllAvailable() bool { return n.NotAvailable() == 0 }
