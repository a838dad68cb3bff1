package credentials

import (
	"errors"
	"fmt"
	"strings"

	kubeletconfigv1 "k8s.io/kubelet/config/v1"
	"sigs.k8s.io/yaml"

	"github.com/pullwatch/pullwatch/pkg/dockerauth"
)

// The kubelet's CredentialProviderConfig (--image-credential-provider-config)
// is read with the kubelet's own published types, k8s.io/kubelet/config/v1,
// strictly (unknown or duplicate fields are errors, as in the kubelet), in
// YAML or JSON. The kubelet accepts the same shape as v1alpha1 and v1beta1.
var configAPIVersions = map[string]bool{
	"kubelet.config.k8s.io/v1alpha1": true,
	"kubelet.config.k8s.io/v1beta1":  true,
	"kubelet.config.k8s.io/v1":       true,
}

// pluginAPIVersions are the CredentialProviderRequest/Response versions the
// kubelet speaks to plugins.
var pluginAPIVersions = map[string]bool{
	"credentialprovider.kubelet.k8s.io/v1alpha1": true,
	"credentialprovider.kubelet.k8s.io/v1beta1":  true,
	"credentialprovider.kubelet.k8s.io/v1":       true,
}

// parseProviderConfig parses and validates a CredentialProviderConfig as
// the kubelet's readCredentialProviderConfigFile and
// validateCredentialProviderConfig do. Errors name the field, never a
// value from env (which may hold secrets).
func parseProviderConfig(data []byte) (*kubeletconfigv1.CredentialProviderConfig, error) {
	if len(data) > dockerauth.MaxConfigBytes {
		return nil, fmt.Errorf("larger than %d bytes", dockerauth.MaxConfigBytes)
	}
	var cfg kubeletconfigv1.CredentialProviderConfig
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, fmt.Errorf("not a CredentialProviderConfig: %w", err)
	}
	if !configAPIVersions[cfg.APIVersion] {
		return nil, fmt.Errorf("apiVersion %q: want kubelet.config.k8s.io/v1 (or v1beta1, v1alpha1)", cfg.APIVersion)
	}
	if cfg.Kind != "CredentialProviderConfig" {
		return nil, fmt.Errorf("kind %q: want CredentialProviderConfig", cfg.Kind)
	}
	var errs []error
	if len(cfg.Providers) == 0 {
		errs = append(errs, errors.New("providers: at least one provider is required"))
	}
	seen := map[string]bool{}
	for i, p := range cfg.Providers {
		field := fmt.Sprintf("providers[%d]", i)
		switch {
		case p.Name == "":
			errs = append(errs, fmt.Errorf("%s.name: required", field))
		case strings.ContainsAny(p.Name, "/ ") || p.Name == "." || p.Name == "..":
			errs = append(errs, fmt.Errorf("%s.name %q: a file name in the bin dir, without '/' or spaces", field, p.Name))
		case seen[p.Name]:
			errs = append(errs, fmt.Errorf("%s.name %q: duplicate", field, p.Name))
		}
		seen[p.Name] = true
		if !pluginAPIVersions[p.APIVersion] {
			errs = append(errs, fmt.Errorf("%s.apiVersion %q: want credentialprovider.kubelet.k8s.io/v1", field, p.APIVersion))
		}
		if len(p.MatchImages) == 0 {
			errs = append(errs, fmt.Errorf("%s.matchImages: at least one is required", field))
		}
		for j, m := range p.MatchImages {
			if !dockerauth.ValidPattern(m) {
				errs = append(errs, fmt.Errorf("%s.matchImages[%d] %q: not a schemeless URL", field, j, m))
			}
		}
		if p.DefaultCacheDuration == nil {
			errs = append(errs, fmt.Errorf("%s.defaultCacheDuration: required", field))
		} else if p.DefaultCacheDuration.Duration < 0 {
			errs = append(errs, fmt.Errorf("%s.defaultCacheDuration: must be >= 0", field))
		}
		for j, e := range p.Env {
			if e.Name == "" {
				errs = append(errs, fmt.Errorf("%s.env[%d].name: required", field, j))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &cfg, nil
}
