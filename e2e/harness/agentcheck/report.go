package agentcheck

// Report is the part of `pullwatch-agent check -o json` the tests read;
// the field names are the contract users rely on. It is the one
// declaration of that output in e2e: every test and the cluster in a box
// read it through this type.
type Report struct {
	Node    string  `json:"node"`
	Runtime Runtime `json:"runtime"`
	Images  []Image `json:"images"`
}

// Runtime is the node's container runtime.
type Runtime struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Image is what the agent says about one image on the node.
type Image struct {
	Image          string `json:"image"`
	Digest         string `json:"digest"`
	InUse          bool   `json:"in_use"`
	Status         string `json:"status"`
	Reason         string `json:"reason"`
	Degraded       bool   `json:"degraded"`
	Drifted        bool   `json:"drifted"`
	RegistryDigest string `json:"registry_digest"`
	// CredentialSource says where the credential the answer was got
	// with came from (empty: anonymous).
	CredentialSource string     `json:"credential_source"`
	Endpoints        []Endpoint `json:"endpoints"`
	Pods             []Pod      `json:"pods"`
}

// Endpoint is one registry endpoint the agent asked (or skipped) for an
// image, in the runtime's order.
type Endpoint struct {
	URL            string  `json:"url"`
	Role           string  `json:"role"`
	Status         string  `json:"status"`
	Reason         string  `json:"reason"`
	HTTPStatus     int     `json:"http_status"`
	Skipped        bool    `json:"skipped"`
	LatencySeconds float64 `json:"latency_seconds"`
}

// Pod is a container that uses the image.
type Pod struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Container string `json:"container"`
}
