package credentials

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// maxConfigBytes bounds every docker config read (a file, a secret's data,
// a plugin's answer): 1 MiB is far more than any real one.
const maxConfigBytes = 1 << 20

// dockerConfigJSON is config.json and a kubernetes.io/dockerconfigjson
// secret's .dockerconfigjson: the kubelet reads "auths" only. Credential
// helpers (credHelpers, credsStore) are the docker CLI's, not the kubelet's.
type dockerConfigJSON struct {
	Auths       map[string]dockerConfigEntry `json:"auths"`
	CredHelpers json.RawMessage              `json:"credHelpers"`
	CredsStore  json.RawMessage              `json:"credsStore"`
}

// dockerConfigEntry is one registry's entry, as the kubelet decodes it
// (DockerConfigEntry.UnmarshalJSON): "auth" (base64 of user:password)
// wins over "username"/"password". identitytoken and registrytoken are
// not read by the kubelet, so not here either.
type dockerConfigEntry struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	Auth          string `json:"auth"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// parsedConfig is a docker config reduced to what the kubelet uses.
type parsedConfig struct {
	entries []entry
	// ignored says what in the config the kubelet does not use (credential
	// helpers, token-only entries), for one debug line. Never a secret.
	ignored []string
}

// parseDockerConfigJSON parses config.json / .dockerconfigjson. Errors
// never quote the input: it holds secrets.
func parseDockerConfigJSON(data []byte) (parsedConfig, error) {
	if len(data) > maxConfigBytes {
		return parsedConfig{}, fmt.Errorf("larger than %d bytes", maxConfigBytes)
	}
	var cfg dockerConfigJSON
	if err := json.Unmarshal(data, &cfg); err != nil {
		return parsedConfig{}, describeJSONError(err)
	}
	p, err := fromAuths(cfg.Auths)
	if err != nil {
		return parsedConfig{}, err
	}
	if len(cfg.CredHelpers) > 0 && string(cfg.CredHelpers) != "null" {
		p.ignored = append(p.ignored, "credHelpers")
	}
	if len(cfg.CredsStore) > 0 && string(cfg.CredsStore) != "null" {
		p.ignored = append(p.ignored, "credsStore")
	}
	return p, nil
}

// parseDockercfg parses the legacy .dockercfg format (and a
// kubernetes.io/dockercfg secret's .dockercfg): the auths map itself.
func parseDockercfg(data []byte) (parsedConfig, error) {
	if len(data) > maxConfigBytes {
		return parsedConfig{}, fmt.Errorf("larger than %d bytes", maxConfigBytes)
	}
	var auths map[string]dockerConfigEntry
	if err := json.Unmarshal(data, &auths); err != nil {
		return parsedConfig{}, describeJSONError(err)
	}
	return fromAuths(auths)
}

// fromAuths turns an auths map into entries, in key order so results do
// not depend on map iteration (the keyring sorts keys anyway).
func fromAuths(auths map[string]dockerConfigEntry) (parsedConfig, error) {
	keys := make([]string, 0, len(auths))
	for k := range auths {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var p parsedConfig
	for _, k := range keys {
		e := auths[k]
		user, pass := e.Username, e.Password
		if e.Auth != "" {
			var err error
			if user, pass, err = decodeAuthField(e.Auth); err != nil {
				return parsedConfig{}, fmt.Errorf("auths[%q].auth: %w", k, err)
			}
		}
		if user == "" && pass == "" {
			// The kubelet would hand the runtime an empty credential, which
			// pulls anonymously: the same as no credential.
			if e.IdentityToken != "" || e.RegistryToken != "" {
				p.ignored = append(p.ignored, fmt.Sprintf("auths[%q] identitytoken/registrytoken", k))
			}
			continue
		}
		p.entries = append(p.entries, entry{key: k, userPass: userPass{user, pass}})
	}
	return p, nil
}

// decodeAuthField decodes "auth": base64(user:password), padded or not,
// as the kubelet's decodeDockerConfigFieldAuth does.
func decodeAuthField(field string) (string, string, error) {
	var decoded []byte
	var err error
	if strings.HasSuffix(strings.TrimSpace(field), "=") {
		decoded, err = base64.StdEncoding.DecodeString(field)
	} else {
		decoded, err = base64.RawStdEncoding.DecodeString(field)
	}
	if err != nil {
		// base64's errors name a byte offset, never the data.
		return "", "", fmt.Errorf("not base64: %w", err)
	}
	user, pass, ok := strings.Cut(string(decoded), ":")
	if !ok {
		return "", "", errors.New("not base64 of username:password")
	}
	return user, pass, nil
}

// describeJSONError says where JSON is broken without quoting it (a syntax
// error's message may carry a character of a secret).
func describeJSONError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("not valid JSON (syntax error at byte %d)", syn.Offset)
	case errors.As(err, &typ):
		where := typ.Field
		if where == "" {
			where = "top level"
		}
		return fmt.Errorf("not a docker config: %s is a JSON %s, want %s", where, typ.Value, typ.Type)
	default:
		return errors.New("not valid JSON")
	}
}
