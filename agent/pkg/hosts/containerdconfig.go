package hosts

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
)

// DefaultContainerdConfig is where containerd reads its configuration.
const DefaultContainerdConfig = "/etc/containerd/config.toml"

// DefaultConfigPath is containerd 2.1+'s config_path when neither it nor
// registry.mirrors is set.
const DefaultConfigPath = "/etc/containerd/certs.d:/etc/docker/certs.d"

// maxConfigBytes bounds what is read of any one configuration file.
const maxConfigBytes = 1 << 20

// The CRI plugin's image table: containerd 2.x (config version 3) and 1.x
// (version 2; version 1 files name the plugin "cri"). Its registry
// section is the "registry" table in it.
var imageTables = [][]string{
	{"plugins", "io.containerd.cri.v1.images"},
	{"plugins", "io.containerd.grpc.v1.cri"},
	{"plugins", "cri"},
}

// RegistryHostConfig is one registry.configs entry: the legacy TLS
// settings and the credentials containerd uses for that host when the
// kubelet hands it none.
type RegistryHostConfig struct {
	// CAFile, CertFile, KeyFile are node paths; InsecureSkipVerify skips
	// the server's certificate check.
	CAFile, CertFile, KeyFile string
	InsecureSkipVerify        bool
	HasTLS                    bool
	// Auth is nil when the entry has no credentials.
	Auth *RuntimeAuth
}

// RuntimeAuth is a registry.configs."host".auth entry. Its String never
// shows the secret.
type RuntimeAuth struct {
	Username, Password, Auth, IdentityToken string
}

// String never shows the secret, so a RuntimeAuth is safe in %v.
func (RuntimeAuth) String() string { return "credentials from the runtime's config" }

// GoString never shows the secret either.
func (a RuntimeAuth) GoString() string { return a.String() }

// UserSecret is what containerd sends for the entry (its ParseAuth):
// username and password, else an identity token, else the base64
// "user:password" of auth.
func (a RuntimeAuth) UserSecret() (user, secret string, err error) {
	switch {
	case a.Username != "":
		return a.Username, a.Password, nil
	case a.IdentityToken != "":
		return "", a.IdentityToken, nil
	case a.Auth != "":
		b, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return "", "", errors.New("registry.configs auth: auth is not base64")
		}
		user, secret, ok := strings.Cut(string(b), ":")
		if !ok {
			return "", "", errors.New(`registry.configs auth: auth is not base64 of "user:password"`)
		}
		return user, secret, nil
	}
	return "", "", nil
}

// ContainerdRegistryConfig is what the runtime's config.toml says about
// registries and about how the CRI plugin pulls.
type ContainerdRegistryConfig struct {
	// Version is the main file's config version (1, 2 or 3).
	Version int
	// ConfigPath is the registry config_path: colon-separated host
	// directory roots ("" when unset).
	ConfigPath string
	// Mirrors is the deprecated registry.mirrors table: registry host →
	// endpoint URLs.
	Mirrors map[string][]string
	// Configs is the deprecated registry.configs table (and registry.auths
	// folded into it, as containerd does): host → TLS and credentials.
	Configs map[string]RegistryHostConfig
	// Headers is registry.headers, sent to every registry.
	Headers map[string][]string
	// UseLocalImagePull is use_local_image_pull (containerd 2.1+).
	UseLocalImagePull bool
	// LocalPullBecause names the first setting that makes containerd 2.1+
	// pull with its local puller instead of the transfer service (as its
	// CheckLocalImagePullConfigs does); "" when none.
	LocalPullBecause string
	// Files are the configuration files read, main file first.
	Files []string

	disableSnapshotAnnotations *bool
	discardUnpackedLayers      bool
	maxConcurrentDownloads     *int64
	imagePullWithSyncFs        bool
	auths                      map[string]RuntimeAuth
}

// ReadContainerdConfig reads containerd's config.toml at the node path
// path and the files its imports name (globs, relative to the file's
// directory; absolute ones are node paths too), all under root, later
// files overriding earlier ones as containerd merges them. A missing main
// file is not an error: containerd then runs with its defaults. Files
// lists them as the agent read them.
func ReadContainerdConfig(root hostfs.Root, path string) (ContainerdRegistryConfig, error) {
	cfg := ContainerdRegistryConfig{Mirrors: map[string][]string{}, Configs: map[string]RegistryHostConfig{}, Headers: map[string][]string{}, auths: map[string]RuntimeAuth{}}
	seen := map[string]bool{}
	var read func(p string, main bool) error
	read = func(p string, main bool) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		file := root.Path(p)
		doc, err := readTOML(file)
		if errors.Is(err, fs.ErrNotExist) && main {
			return nil
		}
		if err != nil {
			return err
		}
		cfg.Files = append(cfg.Files, file)
		if main {
			cfg.Version = fileVersion(doc)
		}
		if err := cfg.apply(file, doc); err != nil {
			return err
		}
		imports, err := stringList(doc["imports"])
		if err != nil {
			return fmt.Errorf("containerd config %s: imports: %w", file, err)
		}
		for _, imp := range imports {
			if !filepath.IsAbs(imp) {
				imp = filepath.Join(filepath.Dir(p), imp)
			}
			matches, err := root.Glob(imp)
			if err != nil {
				return fmt.Errorf("containerd config %s: import %q: %w", file, imp, err)
			}
			for _, m := range matches {
				if err := read(m, false); err != nil {
					return fmt.Errorf("containerd config %s: import %s: %w", file, m, err)
				}
			}
		}
		return nil
	}
	if err := read(path, true); err != nil {
		return ContainerdRegistryConfig{}, err
	}
	cfg.finish()
	return cfg, nil
}

// finish folds registry.auths into configs and finds what makes 2.1+ pull
// locally, as containerd's ValidateImageConfig and
// CheckLocalImagePullConfigs do.
func (cfg *ContainerdRegistryConfig) finish() {
	for endpoint, auth := range cfg.auths {
		if u, err := url.Parse(endpoint); err == nil && u.Scheme != "" {
			endpoint = u.Host
		}
		hc := cfg.Configs[endpoint]
		a := auth
		hc.Auth = &a
		cfg.Configs[endpoint] = hc
	}
	switch {
	case cfg.disableSnapshotAnnotations != nil && !*cfg.disableSnapshotAnnotations:
		cfg.LocalPullBecause = "disable_snapshot_annotations = false"
	case cfg.discardUnpackedLayers:
		cfg.LocalPullBecause = "discard_unpacked_layers"
	case len(cfg.Mirrors) > 0:
		cfg.LocalPullBecause = "registry.mirrors"
	case len(cfg.Configs) > 0:
		cfg.LocalPullBecause = "registry.configs"
	case cfg.maxConcurrentDownloads != nil && *cfg.maxConcurrentDownloads != 3:
		cfg.LocalPullBecause = "max_concurrent_downloads"
	case cfg.imagePullWithSyncFs:
		cfg.LocalPullBecause = "image_pull_with_sync_fs"
	}
}

func readTOML(p string) (map[string]any, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("containerd config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", p, err)
	}
	if len(b) > maxConfigBytes {
		return nil, fmt.Errorf("containerd config %s: larger than %d bytes", p, maxConfigBytes)
	}
	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("containerd config %s is not valid TOML (%s): %w", p, tomlLine(err), err)
	}
	return doc, nil
}

// fileVersion is a file's config version (1 when it says none).
func fileVersion(doc map[string]any) int {
	if v, ok := doc["version"].(int64); ok {
		return int(v)
	}
	return 1
}

// apply takes the registry and pull settings of one file, later files
// overriding earlier ones key by key, as containerd merges its imports.
func (cfg *ContainerdRegistryConfig) apply(file string, doc map[string]any) error {
	for _, path := range imageTables {
		tbl, ok := lookup(doc, path).(map[string]any)
		if !ok {
			continue
		}
		name := strings.Join(path, ".")
		if v, ok := tbl["use_local_image_pull"].(bool); ok {
			cfg.UseLocalImagePull = v
		}
		if v, ok := tbl["disable_snapshot_annotations"].(bool); ok {
			cfg.disableSnapshotAnnotations = &v
		}
		if v, ok := tbl["discard_unpacked_layers"].(bool); ok {
			cfg.discardUnpackedLayers = v
		}
		if v, ok := tbl["max_concurrent_downloads"].(int64); ok {
			cfg.maxConcurrentDownloads = &v
		}
		if v, ok := tbl["image_pull_with_sync_fs"].(bool); ok {
			cfg.imagePullWithSyncFs = v
		}
		if ctr, ok := tbl["containerd"].(map[string]any); ok { // 1.x layout
			if v, ok := ctr["disable_snapshot_annotations"].(bool); ok {
				cfg.disableSnapshotAnnotations = &v
			}
			if v, ok := ctr["discard_unpacked_layers"].(bool); ok {
				cfg.discardUnpackedLayers = v
			}
		}
		sec, ok := tbl["registry"].(map[string]any)
		if !ok {
			continue
		}
		if err := cfg.applyRegistry(file, name+".registry", sec); err != nil {
			return err
		}
	}
	return nil
}

func (cfg *ContainerdRegistryConfig) applyRegistry(file, name string, sec map[string]any) error {
	if v, ok := sec["config_path"]; ok {
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("containerd config %s: %s.config_path must be a string", file, name)
		}
		cfg.ConfigPath = s
	}
	mirrors, _ := sec["mirrors"].(map[string]any)
	for host, m := range mirrors {
		mt, _ := m.(map[string]any)
		eps, err := stringList(mt["endpoint"])
		if err != nil {
			return fmt.Errorf("containerd config %s: %s.mirrors.%q.endpoint: %w", file, name, host, err)
		}
		cfg.Mirrors[host] = eps
	}
	configs, _ := sec["configs"].(map[string]any)
	for host, c := range configs {
		ct, _ := c.(map[string]any)
		hc := cfg.Configs[host]
		if t, ok := ct["tls"].(map[string]any); ok {
			hc.HasTLS = true
			hc.CAFile, _ = t["ca_file"].(string)
			hc.CertFile, _ = t["cert_file"].(string)
			hc.KeyFile, _ = t["key_file"].(string)
			hc.InsecureSkipVerify, _ = t["insecure_skip_verify"].(bool)
		}
		if a, ok := ct["auth"].(map[string]any); ok {
			auth := runtimeAuth(a)
			hc.Auth = &auth
		}
		cfg.Configs[host] = hc
	}
	auths, _ := sec["auths"].(map[string]any)
	for endpoint, a := range auths {
		if at, ok := a.(map[string]any); ok {
			cfg.auths[endpoint] = runtimeAuth(at)
		}
	}
	headers, _ := sec["headers"].(map[string]any)
	for k, v := range headers {
		vals, err := stringList(v)
		if err != nil {
			return fmt.Errorf("containerd config %s: %s.headers.%q: %w", file, name, k, err)
		}
		cfg.Headers[k] = vals
	}
	return nil
}

func runtimeAuth(a map[string]any) RuntimeAuth {
	var r RuntimeAuth
	r.Username, _ = a["username"].(string)
	r.Password, _ = a["password"].(string)
	r.Auth, _ = a["auth"].(string)
	r.IdentityToken, _ = a["identitytoken"].(string)
	return r
}

func lookup(doc map[string]any, path []string) any {
	var cur any = doc
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

func stringList(v any) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want a list of strings, got %T", v)
	}
	out := make([]string, 0, len(list))
	for _, x := range list {
		s, ok := x.(string)
		if !ok {
			return nil, fmt.Errorf("want a list of strings, found %T", x)
		}
		out = append(out, s)
	}
	return out, nil
}
