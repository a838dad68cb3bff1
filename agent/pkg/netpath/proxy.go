// Package netpath reproduces the node's network path for registry probes:
// the proxy settings the container runtime runs with and the node's DNS
// resolver, whatever the agent pod's own environment and DNS policy are.
package netpath

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"
	"golang.org/x/net/http/httpproxy"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// Proxy sources for --proxy-from.
const (
	ProxyFromEnv     = "env"     // the agent's own HTTP(S)_PROXY / NO_PROXY
	ProxyFromSystemd = "systemd" // the runtime's systemd unit and drop-ins
	ProxyFromNone    = "none"    // direct connections
)

// maxUnitBytes bounds what is read of one unit file.
const maxUnitBytes = 1 << 20

// ProxyConfig is the proxy the runtime uses. The zero value is no proxy.
type ProxyConfig struct {
	HTTPProxy, HTTPSProxy, NoProxy string
	// Source says where it came from, for logs.
	Source string
}

// Func returns the proxy function for an http.Transport.
func (c ProxyConfig) Func() func(*http.Request) (*url.URL, error) {
	if c.HTTPProxy == "" && c.HTTPSProxy == "" {
		return nil
	}
	f := (&httpproxy.Config{HTTPProxy: c.HTTPProxy, HTTPSProxy: c.HTTPSProxy, NoProxy: c.NoProxy}).ProxyFunc()
	return func(r *http.Request) (*url.URL, error) { return f(r.URL) }
}

// Redacted is the configuration with any user:password in the proxy URLs
// removed, safe to log.
func (c ProxyConfig) Redacted() ProxyConfig {
	strip := func(s string) string {
		u, err := url.Parse(s)
		if err != nil || u.User == nil {
			return s
		}
		u.User = nil
		return u.String()
	}
	return ProxyConfig{HTTPProxy: strip(c.HTTPProxy), HTTPSProxy: strip(c.HTTPSProxy), NoProxy: c.NoProxy, Source: c.Source}
}

// UnitDirs are where systemd finds units, in the order the agent reads
// them (later assignments win): vendor units first (/usr/local/lib holds
// the units of tarball installs such as RKE2's), then the administrator's.
var UnitDirs = []string{"/lib/systemd/system", "/usr/lib/systemd/system", "/usr/local/lib/systemd/system", "/etc/systemd/system", "/run/systemd/system"}

// UnitPaths are the node paths of unit's files: the unit file and its
// drop-in directory in each of UnitDirs, for LoadProxy.
func UnitPaths(unit string) []string {
	var out []string
	for _, dir := range UnitDirs {
		out = append(out, filepath.Join(dir, unit), filepath.Join(dir, unit+".d"))
	}
	return out
}

// ProxyOptions says where the runtime's proxy settings are.
type ProxyOptions struct {
	// Source is ProxyFromSystemd, ProxyFromEnv or ProxyFromNone.
	Source string
	// Root is where the node's files are.
	Root hostfs.Root
	// UnitFiles are the runtime's unit files and drop-in directories,
	// node paths in systemd's order (UnitPaths); missing ones are skipped.
	// Their Environment= assignments apply, then the files their
	// EnvironmentFile= lines name (%n and %N expanded; a missing file is
	// skipped whether or not it is marked "-"), which override them, as
	// in systemd.
	UnitFiles []string
	// EnvFiles are more environment files (node paths, KEY=VALUE lines)
	// read after the units' own, e.g. /etc/default/k3s for a runtime whose
	// unit the agent cannot see (--runtime-env-file).
	EnvFiles []string
	// Prefix, when set, is a variable prefix the runtime's supervisor
	// strips for the runtime alone: k3s and RKE2 start their containerd
	// with CONTAINERD_HTTP_PROXY as HTTP_PROXY (and so on), over the
	// unprefixed value.
	Prefix string
	// Getenv is the agent's environment, for ProxyFromEnv.
	Getenv func(string) string
}

// LoadProxy returns the proxy configuration for source. For systemd,
// unitFiles are the runtime's unit file and drop-in directories, node
// paths read under root, in systemd's order (the unit, then *.conf
// drop-ins sorted by name, later assignments winning); missing ones are
// skipped. LoadProxyOptions says more.
func LoadProxy(ctx context.Context, source string, root hostfs.Root, unitFiles []string, getenv func(string) string) (ProxyConfig, error) {
	return LoadProxyOptions(ctx, ProxyOptions{Source: source, Root: root, UnitFiles: unitFiles, Getenv: getenv})
}

// LoadProxyOptions returns the proxy configuration o describes.
func LoadProxyOptions(ctx context.Context, o ProxyOptions) (ProxyConfig, error) {
	switch o.Source {
	case ProxyFromNone:
		return ProxyConfig{Source: "none"}, nil
	case ProxyFromEnv:
		return fromEnv(o.Getenv, "agent environment"), nil
	case ProxyFromSystemd:
		env := map[string]string{}
		var read, envFiles []string
		for _, p := range expandDropIns(o.Root, o.UnitFiles) {
			u, err := unitEnvironment(o.Root.Path(p))
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				return ProxyConfig{}, err
			}
			read = append(read, o.Root.Path(p))
			for k, v := range u.env {
				env[k] = v
			}
			if u.resetFiles {
				envFiles = nil
			}
			for _, f := range u.envFiles {
				envFiles = append(envFiles, expandSpecifiers(f, unitOf(p)))
			}
		}
		for _, f := range append(envFiles, o.EnvFiles...) {
			p := o.Root.Path(f)
			vars, err := readEnvFile(p)
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				return ProxyConfig{}, err
			}
			read = append(read, p)
			for k, v := range vars {
				env[k] = v
			}
		}
		if o.Prefix != "" {
			for k, v := range env {
				if name, ok := strings.CutPrefix(k, o.Prefix); ok && name != "" {
					env[name] = v
					delete(env, strings.ToLower(name))
				}
			}
		}
		cfg := fromEnv(func(k string) string { return env[k] }, "systemd "+strings.Join(read, ", "))
		if len(read) == 0 {
			cfg.Source = "systemd (no unit files found: direct connections)"
		}
		logging.FromContext(ctx).DebugContext(ctx, "runtime proxy from systemd", "files", read)
		return cfg, nil
	default:
		return ProxyConfig{}, fmt.Errorf("proxy source %q: want env, systemd or none", o.Source)
	}
}

// fromEnv reads the variables the way Go and containerd do: upper case
// first, then lower case.
func fromEnv(getenv func(string) string, source string) ProxyConfig {
	get := func(k string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return getenv(strings.ToLower(k))
	}
	return ProxyConfig{HTTPProxy: get("HTTP_PROXY"), HTTPSProxy: get("HTTPS_PROXY"), NoProxy: get("NO_PROXY"), Source: source}
}

// expandDropIns turns directories into their *.conf files, sorted (node
// paths).
func expandDropIns(root hostfs.Root, paths []string) []string {
	var out []string
	for _, p := range paths {
		fi, err := os.Stat(root.Path(p))
		if err != nil || !fi.IsDir() {
			out = append(out, p)
			continue
		}
		confs, _ := root.Glob(filepath.Join(p, "*.conf"))
		sort.Strings(confs)
		out = append(out, confs...)
	}
	return out
}

// unitOf is the unit a unit file or drop-in (node path) belongs to:
// k3s.service for /etc/systemd/system/k3s.service and for
// /etc/systemd/system/k3s.service.d/proxy.conf.
func unitOf(p string) string {
	if d := filepath.Base(filepath.Dir(p)); strings.HasSuffix(d, ".d") {
		return strings.TrimSuffix(d, ".d")
	}
	return filepath.Base(p)
}

// expandSpecifiers expands the unit specifiers an EnvironmentFile= path
// uses in practice: %n (the unit's full name), %N (without its type
// suffix, "k3s" for k3s.service) and %%.
func expandSpecifiers(s, unitName string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	short := strings.TrimSuffix(unitName, filepath.Ext(unitName))
	return strings.NewReplacer("%%", "%", "%n", unitName, "%N", short).Replace(s)
}

// unitEnv is what a unit file says about its service's environment.
type unitEnv struct {
	env        map[string]string
	envFiles   []string // EnvironmentFile= paths, "-" removed, in order
	resetFiles bool     // an empty EnvironmentFile= cleared earlier files' list
}

// readUnit reads a unit file with the size limit.
func readUnit(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxUnitBytes+1))
	if err != nil {
		return "", fmt.Errorf("read systemd unit %s: %w", path, err)
	}
	if len(b) > maxUnitBytes {
		return "", fmt.Errorf("systemd unit %s is larger than %d bytes", path, maxUnitBytes)
	}
	return string(b), nil
}

// unitEnvironment returns the Environment= assignments and the
// EnvironmentFile= paths of a unit file's [Service] section, parsed with
// go-systemd's unit deserializer.
func unitEnvironment(path string) (unitEnv, error) {
	text, err := readUnit(path)
	if err != nil {
		return unitEnv{}, err
	}
	opts, err := unit.DeserializeOptions(strings.NewReader(text))
	if err != nil {
		return unitEnv{}, fmt.Errorf("systemd unit %s does not parse: %w", path, err)
	}
	u := unitEnv{env: map[string]string{}}
	for _, o := range opts {
		if o.Section != "Service" {
			continue
		}
		switch o.Name {
		case "Environment":
			if strings.TrimSpace(o.Value) == "" {
				// "Environment=" resets the list, as in systemd.
				clear(u.env)
				continue
			}
			for _, word := range splitQuoted(o.Value) {
				k, v, ok := strings.Cut(word, "=")
				if ok && k != "" {
					u.env[k] = v
				}
			}
		case "EnvironmentFile":
			f := strings.TrimSpace(o.Value)
			if f == "" {
				u.envFiles, u.resetFiles = nil, true
				continue
			}
			u.envFiles = append(u.envFiles, strings.TrimPrefix(f, "-"))
		}
	}
	return u, nil
}

// readEnvFile reads an environment file as systemd's EnvironmentFile=
// does: KEY=VALUE lines, # and ; comments, blank lines, values optionally
// in single or double quotes, a trailing backslash continuing the line.
func readEnvFile(path string) (map[string]string, error) {
	text, err := readUnit(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	text = strings.ReplaceAll(text, "\\\n", "")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			continue
		}
		v = strings.TrimSpace(v)
		if words := splitQuoted(v); len(words) == 1 && (strings.HasPrefix(v, `"`) || strings.HasPrefix(v, "'")) {
			v = words[0]
		}
		env[k] = v
	}
	return env, nil
}

// splitQuoted splits an Environment= value into words the way systemd
// does: whitespace separates, double or single quotes group, backslash
// escapes. go-systemd leaves this to the caller.
func splitQuoted(s string) []string {
	var words []string
	var cur strings.Builder
	var quote rune
	inWord, escaped := false, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped, inWord = true, true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}
