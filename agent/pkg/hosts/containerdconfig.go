package hosts

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
)

// DefaultContainerdConfig is where containerd reads its configuration.
const DefaultContainerdConfig = "/etc/containerd/config.toml"

// DefaultConfigPath is containerd 2.x's config_path when none is set.
const DefaultConfigPath = "/etc/containerd/certs.d:/etc/docker/certs.d"

// maxConfigBytes bounds what is read of any one configuration file.
const maxConfigBytes = 1 << 20

// The CRI plugin's registry section: containerd 2.x (config version 3)
// and 1.x (version 2).
var registrySections = [][]string{
	{"plugins", "io.containerd.cri.v1.images", "registry"},
	{"plugins", "io.containerd.grpc.v1.cri", "registry"},
}

// ContainerdRegistryConfig is what the runtime's config.toml says about
// registries.
type ContainerdRegistryConfig struct {
	// ConfigPath is the registry config_path: colon-separated host
	// directory roots ("" when unset).
	ConfigPath string
	// Mirrors is the deprecated registry.mirrors table: registry host →
	// endpoint URLs.
	Mirrors map[string][]string
	// Files are the configuration files read, main file first.
	Files []string
}

// ReadContainerdConfig reads containerd's config.toml at the node path
// path and the files its imports name (globs, relative to the file's
// directory; absolute ones are node paths too), all under root, later
// files overriding earlier ones as containerd merges them. A missing main
// file is not an error: containerd then runs with its defaults. Files
// lists them as the agent read them.
func ReadContainerdConfig(root hostfs.Root, path string) (ContainerdRegistryConfig, error) {
	cfg := ContainerdRegistryConfig{Mirrors: map[string][]string{}}
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
	return cfg, nil
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

// apply takes the registry settings of one file.
func (cfg *ContainerdRegistryConfig) apply(file string, doc map[string]any) error {
	for _, path := range registrySections {
		sec, ok := lookup(doc, path).(map[string]any)
		if !ok {
			continue
		}
		if v, ok := sec["config_path"]; ok {
			s, ok := v.(string)
			if !ok {
				return fmt.Errorf("containerd config %s: %s.config_path must be a string", file, strings.Join(path, "."))
			}
			cfg.ConfigPath = s
		}
		mirrors, _ := sec["mirrors"].(map[string]any)
		for host, m := range mirrors {
			mt, _ := m.(map[string]any)
			eps, err := stringList(mt["endpoint"])
			if err != nil {
				return fmt.Errorf("containerd config %s: mirrors.%q.endpoint: %w", file, host, err)
			}
			cfg.Mirrors[host] = eps
		}
	}
	return nil
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
