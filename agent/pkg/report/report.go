// Package report is the agent's account of one node: the JSON that
// `pullwatch-agent check -o json` prints, the table it prints by default,
// and the pullwatch.v1 snapshot the agent streams to the aggregator.
package report

import (
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullwatch/pullwatch/agent/pkg/cri"
)

// Node is one round's result for a node. Its JSON field names are a
// contract: extend, never rename.
type Node struct {
	Node    string      `json:"node"`
	Runtime cri.Runtime `json:"runtime"`
	// Platform is the node's, as images are matched against it: os/arch[/variant].
	Platform ocispec.Platform `json:"platform"`
	// Labels are what --node-labels says about the node (e.g. its zone).
	Labels     map[string]string `json:"labels,omitempty"`
	ObservedAt time.Time         `json:"observed_at"`
	Images     []Image           `json:"images"`
}

// Image is one normalized reference on the node.
type Image struct {
	Image            string     `json:"image"`
	Registry         string     `json:"registry,omitempty"`
	Digest           string     `json:"digest,omitempty"`
	ImageID          string     `json:"image_id,omitempty"`
	RepoDigests      []string   `json:"repo_digests,omitempty"`
	InUse            bool       `json:"in_use"`
	Status           string     `json:"status"`
	Reason           string     `json:"reason,omitempty"`
	CheckedAt        *time.Time `json:"checked_at,omitempty"`
	Degraded         bool       `json:"degraded"`
	Drifted          bool       `json:"drifted"`
	RegistryDigest   string     `json:"registry_digest,omitempty"`
	CredentialSource string     `json:"credential_source,omitempty"`
	Endpoints        []Endpoint `json:"endpoints"`
	Pods             []cri.Use  `json:"pods"`
}

// Endpoint is one registry endpoint's answer for an image.
type Endpoint struct {
	URL            string    `json:"url"`
	Role           string    `json:"role"`
	Status         string    `json:"status"`
	Reason         string    `json:"reason,omitempty"`
	LatencySeconds float64   `json:"latency_seconds"`
	HTTPStatus     int       `json:"http_status,omitempty"`
	CheckedAt      time.Time `json:"checked_at"`
	// Skipped: the runtime would not ask this endpoint for this reference.
	Skipped            bool   `json:"skipped,omitempty"`
	RateLimitRemaining string `json:"ratelimit_remaining,omitempty"`
}

// AllAvailable reports whether every image on the node is available: the
// exit status of `check`.
func (n Node) AllAvailable() bool { return n.NotAvailable() == 0 }

// NotAvailable counts the node's images whose status is not available.
func (n Node) NotAvailable() int {
	count := 0
	for _, im := range n.Images {
		if im.Status != "available" {
			count++
		}
	}
	return count
}
