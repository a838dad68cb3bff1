// Package credentials finds the pull credentials the kubelet would hand
// the runtime for an image, in the kubelet's order: the imagePullSecrets of
// the pods using the image, then the node's keyring (config.json and
// .dockercfg), then credential provider plugins.
//
// A Credential's secret parts never leave this package's callers' memory:
// not in logs, errors, metrics, reports or the status page. Only Source
// (where it came from) is ever shown.
package credentials

import (
	"context"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
)

// Sources, as reported in ImageReport.credential_source.
const (
	SourceAnonymous          = "anonymous"
	SourcePullSecret         = "pull_secret"
	SourceNodeKeyring        = "node_keyring"
	SourceCredentialProvider = "credential_provider"
	// SourceRuntimeConfig: the runtime's own configuration (containerd's
	// registry.configs."host".auth, where k3s and RKE2 put the
	// credentials of registries.yaml), which the runtime uses when the
	// kubelet hands it none.
	SourceRuntimeConfig = "runtime_config"
)

// Credential is what the node would send to a registry.
type Credential struct {
	Username string
	Secret   string
	// Source is one of the Source constants.
	Source string
}

// String never shows the secret, so a Credential is safe in %v.
func (c Credential) String() string { return "credential from " + c.Source }

// GoString never shows the secret either.
func (c Credential) GoString() string { return c.String() }

// Pod names a pod that uses an image; its pull secrets apply to the image.
// UID is the pod's, as the runtime knows it (the kubelet's sandbox label).
type Pod struct {
	Namespace, Name, UID string
}

// Provider returns the credentials to try for ref, in the kubelet's order.
// An empty list means anonymous.
type Provider interface {
	Lookup(ctx context.Context, ref imageref.Ref, pods []Pod) ([]Credential, error)
}

// None is the Provider with no credentials: every pull is anonymous.
type None struct{}

// Lookup implements Provider.
func (None) Lookup(context.Context, imageref.Ref, []Pod) ([]Credential, error) { return nil, nil }
