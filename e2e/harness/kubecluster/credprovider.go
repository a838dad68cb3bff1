package kubecluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// The private registry and the kubelets' service-account-token credential
// provider (KEP-4412), when Options.CredentialProvider names the plugin:
// a registry with basic auth whose only credential comes from a provider
// whose config has tokenAttributes, so the kubelet hands the plugin the
// pod's service account token and the plugin refuses to answer without
// one. No pull secret, no node keyring: only the kubelet can pull from it.
const (
	// PrivatePort is where the private registry listens, in RegNS.
	PrivatePort = 5002
	// PrivateRepo is the image the private registry holds.
	PrivateRepo = "private/sleeper"
	// CredentialProviderName is the plugin's name (its file name in the
	// bin dir) and the provider's name in the kubelet's config.
	CredentialProviderName = "pullwatch-e2e-token-provider"
	// CredentialProviderAudience is the service account token audience the
	// provider asks the kubelet for.
	CredentialProviderAudience = "pullwatch-e2e-registry"
	// CredentialProviderDir holds, on every node, the provider config
	// (config.yaml), the plugin and its request log (requests.log).
	CredentialProviderDir = "/etc/kubernetes/credential-providers"

	privateUser = "kep4412"
	privatePass = "token-exchanged-secret"
)

// startPrivateRegistry starts the private registry beside the others and
// pushes PrivateRepo:1 into it.
func (c *Cluster) startPrivateRegistry(ctx context.Context) error {
	var err error
	c.Private, err = registry.Start(ctx, filepath.Join(c.dir, "private"), registry.Options{
		Host: c.RegNS.IP().String(), Port: PrivatePort, TLS: true, Netns: c.RegNS.Netns(), Detach: c.opts.Detach,
		Htpasswd: map[string]string{privateUser: privatePass},
	})
	if err != nil {
		return fmt.Errorf("private registry: %w", err)
	}
	if _, err := registry.PushSleeper(ctx, c.Private, PrivateRepo, "1"); err != nil {
		return fmt.Errorf("push %s to %s: %w", PrivateRepo, c.Private.Addr(), err)
	}
	return nil
}

// PrivateImage is PrivateRepo:1 in the private registry ("" without one).
func (c *Cluster) PrivateImage() string {
	if c.Private == nil {
		return ""
	}
	return c.Private.Ref(PrivateRepo, "1")
}

// credentialProviderNode is what each node gets for the private registry:
// its hosts.toml and CA, the provider config and plugin, the kubelet's
// flags.
func (c *Cluster) credentialProviderNode() (files, executables map[string]string, kubeletArgs []string, err error) {
	if c.Private == nil {
		return nil, nil, nil, nil
	}
	host := c.Private.Addr()
	ca, err := os.ReadFile(c.Private.CAFile())
	if err != nil {
		return nil, nil, nil, err
	}
	files = map[string]string{
		registryCAPath(host, "ca.crt"):                    string(ca),
		"/etc/containerd/certs.d/" + host + "/hosts.toml": fmt.Sprintf("server = %q\nca = %q\n", c.Private.URL(), registryCAPath(host, "ca.crt")),
		CredentialProviderDir + "/config.yaml":            c.credentialProviderConfig(),
		CredentialProviderDir + "/requests.log":           "",
	}
	executables = map[string]string{CredentialProviderDir + "/" + CredentialProviderName: c.opts.CredentialProvider}
	kubeletArgs = []string{
		"--image-credential-provider-config=" + CredentialProviderDir + "/config.yaml",
		"--image-credential-provider-bin-dir=" + CredentialProviderDir,
	}
	return files, executables, kubeletArgs, nil
}

// credentialProviderConfig is the kubelets' CredentialProviderConfig: one
// provider with tokenAttributes (KEP-4412, beta and on by default in 1.34),
// its plugin told to refuse a request without a token.
func (c *Cluster) credentialProviderConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: %s
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    matchImages: [%q]
    defaultCacheDuration: 1m
    tokenAttributes:
      serviceAccountTokenAudience: %s
      cacheType: ServiceAccount
      requireServiceAccount: true
    env:
      - {name: CREDPROVIDER_USERNAME, value: %s}
      - {name: CREDPROVIDER_PASSWORD, value: %s}
      - {name: CREDPROVIDER_REQUIRE_TOKEN, value: "1"}
      - {name: CREDPROVIDER_LOG, value: %s/requests.log}
`, CredentialProviderName, c.Private.Addr(), CredentialProviderAudience, privateUser, privatePass, CredentialProviderDir)
}

// allowProviderAudience lets the kubelets request service account tokens
// for the provider's audience (the NodeRestriction admission plugin's
// ServiceAccountNodeAudienceRestriction, on by default since 1.33, refuses
// other audiences than those the node's pods already use).
func (c *Cluster) allowProviderAudience(ctx context.Context) error {
	if c.Private == nil {
		return nil
	}
	const name = "pullwatch-e2e-credential-provider-audience"
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{CredentialProviderAudience},
			Verbs: []string{"request-serviceaccounts-token-audience"},
		}},
	}
	if _, err := c.Client().RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("ClusterRole %s: %w", name, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:nodes"}},
	}
	if _, err := c.Client().RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("ClusterRoleBinding %s: %w", name, err)
	}
	return nil
}

// credentialProviderPatch is the overlay's patch of the agent DaemonSet for
// a cluster whose kubelets use a credential provider: the agent is given
// the kubelet's own config and plugin directory, as docs/credentials.md
// tells users to do ("" without one).
func (c *Cluster) credentialProviderPatch() string {
	if c.Private == nil {
		return ""
	}
	return fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: pullwatch-agent
  namespace: %s
spec:
  template:
    spec:
      containers:
        - name: agent
          env:
            - name: PULLWATCH_IMAGE_CREDENTIAL_PROVIDER_CONFIG
              value: %[2]s/config.yaml
            - name: PULLWATCH_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR
              value: %[2]s
          volumeMounts:
            - name: credential-providers
              mountPath: /host%[2]s
              readOnly: true
      volumes:
        - name: credential-providers
          hostPath:
            path: %[2]s
            type: Directory
`, Namespace, CredentialProviderDir)
}
