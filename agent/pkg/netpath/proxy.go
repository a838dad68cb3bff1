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
// them (later assignments win).
var UnitDirs = []string{"/lib/systemd/system", "/usr/lib/systemd/system", "/etc/systemd/system", "/run/systemd/system"}

// UnitPaths are the node paths of unit's files: the unit file and its
// drop-in directory in each of UnitDirs, for LoadProxy.
func UnitPaths(unit string) []string {
	var out []string
	for _, dir := range UnitDirs {
		out = append(out, filepath.Join(dir, unit), filepath.Join(dir, unit+".d"))
	}
	return out
}

// LoadProxy returns the proxy configuration for source. For systemd,
// unitFiles are the runtime's unit file and drop-in directories, node
// paths read under root, in systemd's order (the unit, then *.conf
// drop-ins sorted by name, later assignments winning); missing ones are
// skipped.
func LoadProxy(ctx context.Context, source string, root hostfs.Root, unitFiles []string, getenv func(string) string) (ProxyConfig, error) {
	switch source {
	case ProxyFromNone:
		return ProxyConfig{Source: "none"}, nil
	case ProxyFromEnv:
		return fromEnv(getenv, "agent environment"), nil
	case ProxyFromSystemd:
		env := map[string]string{}
		var read []string
		for _, p := range expandDropIns(root, unitFiles) {
			p = root.Path(p)
			vars, err := unitEnvironment(p)
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
		cfg := fromEnv(func(k string) string { return env[k] }, "systemd "+strings.Join(read, ", "))
		if len(read) == 0 {
			cfg.Source = "systemd (no unit files found: direct connections)"
		}
		logging.FromContext(ctx).DebugContext(ctx, "runtime proxy from systemd", "files", read)
		return cfg, nil
	default:
		return ProxyConfig{}, fmt.Errorf("proxy source %q: want env, systemd or none", source)
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

// unitEnvironment returns the Environment= assignments of a unit file's
// [Service] section, parsed with go-systemd's unit deserializer.
func unitEnvironment(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxUnitBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read systemd unit %s: %w", path, err)
	}
	if len(b) > maxUnitBytes {
		return nil, fmt.Errorf("systemd unit %s is larger than %d bytes", path, maxUnitBytes)
	}
	opts, err := unit.DeserializeOptions(strings.NewReader(string(b)))
	if err != nil {
		return nil, fmt.Errorf("systemd unit %s does not parse: %w", path, err)
	}
	env := map[string]string{}
	for _, o := range opts {
		if o.Section != "Service" || o.Name != "Environment" {
			continue
		}
		if strings.TrimSpace(o.Value) == "" {
			// "Environment=" resets the list, as in systemd.
			clear(env)
			continue
		}
		for _, word := range splitQuoted(o.Value) {
			k, v, ok := strings.Cut(word, "=")
			if ok && k != "" {
				env[k] = v
			}
		}
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
