package dockerauth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// MaxConfigBytes bounds every docker config read (a file, a secret's
// data, a plugin's answer): 1 MiB is far more than any real one.
const MaxConfigBytes = 1 << 20

// Credential is one username and password the kubelet would hand the
// runtime. Its String and GoString never show the password.
type Credential struct {
	Username, Password string
	// Origin names where the credential was read (a file, a secret's
	// "namespace/name"), set by the caller that adds it to a Keyring;
	// never secret.
	Origin string
}

// String never shows the password, so a Credential is safe in %v.
func (c Credential) String() string { return "credential (not shown)" }

// GoString never shows the password either.
func (c Credential) GoString() string { return c.String() }

// Entry is one key of a docker config ("https://index.docker.io/v1/",
// "quay.io/org", "*.example.com") with its credential.
type Entry struct {
	Key string
	Credential
}

// Config is a docker config reduced to what the kubelet uses.
type Config struct {
	Entries []Entry
	// Ignored says what in the config the kubelet does not use (credential
	// helpers, token-only entries), for one debug line. Never a secret.
	Ignored []string
}

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

// ParseConfigJSON parses config.json / .dockerconfigjson. Errors never
// quote the input: it holds secrets.
func ParseConfigJSON(data []byte) (Config, error) {
	if len(data) > MaxConfigBytes {
		return Config{}, fmt.Errorf("larger than %d bytes", MaxConfigBytes)
	}
	var cfg dockerConfigJSON
	if err := json.Unmarshal(data, &cfg); err != nil {
		return Config{}, DescribeJSONError(err)
	}
	p, err := fromAuths(cfg.Auths)
	if err != nil {
		return Config{}, err
	}
	if len(cfg.CredHelpers) > 0 && string(cfg.CredHelpers) != "null" {
		p.Ignored = append(p.Ignored, "credHelpers")
	}
	if len(cfg.CredsStore) > 0 && string(cfg.CredsStore) != "null" {
		p.Ignored = append(p.Ignored, "credsStore")
	}
	return p, nil
}

// ParseDockercfg parses the legacy .dockercfg format (and a
// kubernetes.io/dockercfg secret's .dockercfg): the auths map itself.
func ParseDockercfg(data []byte) (Config, error) {
	if len(data) > MaxConfigBytes {
		return Config{}, fmt.Errorf("larger than %d bytes", MaxConfigBytes)
	}
	var auths map[string]dockerConfigEntry
	if err := json.Unmarshal(data, &auths); err != nil {
		return Config{}, DescribeJSONError(err)
	}
	return fromAuths(auths)
}

// fromAuths turns an auths map into entries, in key order so results do
// not depend on map iteration (the keyring sorts keys anyway).
func fromAuths(auths map[string]dockerConfigEntry) (Config, error) {
	keys := make([]string, 0, len(auths))
	for k := range auths {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var p Config
	for _, k := range keys {
		e := auths[k]
		user, pass := e.Username, e.Password
		if e.Auth != "" {
			var err error
			if user, pass, err = decodeAuthField(e.Auth); err != nil {
				return Config{}, fmt.Errorf("auths[%q].auth: %w", k, err)
			}
		}
		if user == "" && pass == "" {
			// The kubelet would hand the runtime an empty credential, which
			// pulls anonymously: the same as no credential.
			if e.IdentityToken != "" || e.RegistryToken != "" {
				p.Ignored = append(p.Ignored, fmt.Sprintf("auths[%q] identitytoken/registrytoken", k))
			}
			continue
		}
		p.Entries = append(p.Entries, Entry{Key: k, Credential: Credential{Username: user, Password: pass}})
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

// DescribeJSONError says where JSON is broken without quoting it (a syntax
// error's message may carry a character of a secret).
func DescribeJSONError(err error) error {
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
