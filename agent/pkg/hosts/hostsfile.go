package hosts

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/pelletier/go-toml/v2/unstable"
)

// containerd's hosts.toml loader (core/remotes/docker/config) reads the
// ca and client files a hosts.toml names itself: a relative path from the
// host directory, an absolute one as it stands. Under a host root an
// absolute path is the node's, and the container's file of that name is
// the wrong one (or none). So when a hosts.toml names an absolute ca or
// client path, the loader is handed a copy with every such path resolved
// under the root, in a private directory; everything else it reads as
// containerd does.

// loaderHostDir is the host directory handed to containerd's loader for
// host.
func (c *Containerd) loaderHostDir(host string) (string, error) {
	dir, err := c.hostDir(host)
	if err != nil || dir == "" {
		return dir, err
	}
	file := filepath.Join(dir, "hosts.toml")
	if c.legacy && c.ignoredHostsFile(file) != "" {
		// containerd 1.6 refuses this hosts.toml and reads the
		// directory's certificate files instead (as with no hosts.toml).
		return c.copies.certsOnly(dir)
	}
	if c.opts.Root.Dir() == "" {
		return dir, nil
	}
	b, err := readLimited(file)
	if errors.Is(err, fs.ErrNotExist) {
		return dir, nil // certificate files only, found relative to dir
	}
	if err != nil {
		return "", err
	}
	nodeDir := c.opts.Root.NodePath(dir)
	rewritten, changed, err := rewriteHostsFilePaths(b, func(p string) string {
		if !filepath.IsAbs(p) {
			p = filepath.Join(nodeDir, p)
		}
		return c.opts.Root.Path(p)
	})
	if err != nil || !changed {
		// Not TOML: containerd's loader says so and falls back to the
		// directory's certificate files, as containerd does.
		return dir, nil
	}
	copyDir, err := c.copies.dir(rewritten)
	if err != nil {
		return "", fmt.Errorf("%s names absolute ca or client paths, read under --host-root %s through a rewritten copy: %w (the agent needs a writable temporary directory, e.g. an emptyDir at /tmp)",
			file, c.opts.Root.Dir(), err)
	}
	return copyDir, nil
}

// rewriteHostsFilePaths returns the hosts.toml b with every ca and client
// path (top level and [host."..."] tables, strings or arrays of strings or
// of pairs) replaced by what mapPath returns, the rest of the file as it
// is, byte for byte (containerd takes the order of the [host] tables from
// the text). It reports whether any path was absolute; when none is, the
// file needs no copy.
func rewriteHostsFilePaths(b []byte, mapPath func(string) string) ([]byte, bool, error) {
	type edit struct {
		start, end int
		text       string
	}
	var (
		edits  []edit
		anyAbs bool
		table  []string
		p      unstable.Parser
	)
	var visit func(n *unstable.Node)
	visit = func(n *unstable.Node) {
		switch n.Kind {
		case unstable.String:
			s := string(n.Data)
			anyAbs = anyAbs || filepath.IsAbs(s)
			start := int(n.Raw.Offset)
			edits = append(edits, edit{start, start + int(n.Raw.Length), tomlString(mapPath(s))})
		case unstable.Array:
			for it := n.Children(); it.Next(); {
				visit(it.Node())
			}
		}
	}
	p.Reset(b)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = keyParts(e.Key())
		case unstable.KeyValue:
			if isPathKey(append(slices.Clone(table), keyParts(e.Key())...)) {
				visit(e.Value())
			}
		}
	}
	if err := p.Error(); err != nil {
		return nil, false, err
	}
	if !anyAbs {
		return b, false, nil
	}
	var out strings.Builder
	last := 0
	for _, e := range edits {
		out.Write(b[last:e.start])
		out.WriteString(e.text)
		last = e.end
	}
	out.Write(b[last:])
	return []byte(out.String()), true, nil
}

func keyParts(it unstable.Iterator) []string {
	var parts []string
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}

// isPathKey reports whether key holds file paths for containerd's loader.
func isPathKey(key []string) bool {
	last := key[len(key)-1]
	if last != "ca" && last != "client" {
		return false
	}
	return len(key) == 1 || (len(key) == 3 && key[0] == "host")
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// certSuffixes are the files containerd's loader reads from a host
// directory without a hosts.toml (Docker's certs.d layout): CAs (.crt) and
// client pairs (.cert with .key).
var certSuffixes = []string{".crt", ".cert", ".key"}

// certFiles lists dir's certificate files by name.
func certFiles(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		for _, suf := range certSuffixes {
			if !e.IsDir() && strings.HasSuffix(e.Name(), suf) {
				names = append(names, e.Name())
			}
		}
	}
	return names
}

// hasCertFiles reports whether host's directory holds certificate files.
func (c *Containerd) hasCertFiles(host string) bool {
	dir, err := c.hostDir(host)
	return err == nil && dir != "" && len(certFiles(dir)) > 0
}

// hostsCopies holds rewritten hosts.toml files, one directory per content
// (so a loader reading one never sees it change), under a private
// temporary directory made on first use.
type hostsCopies struct {
	parent string // "" is os.TempDir()
	mu     sync.Mutex
	base   string
}

func (h *hostsCopies) dir(content []byte) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.init(); err != nil {
		return "", err
	}
	sum := sha256.Sum256(content)
	dir := filepath.Join(h.base, hex.EncodeToString(sum[:12]))
	file := filepath.Join(dir, "hosts.toml")
	if _, err := os.Stat(file); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(file, content, 0o600); err != nil {
		return "", err
	}
	return dir, nil
}

func (h *hostsCopies) init() error {
	if h.base != "" {
		return nil
	}
	base, err := os.MkdirTemp(h.parent, "pullwatch-hosts-")
	if err != nil {
		return err
	}
	h.base = base
	return nil
}

// certsOnly returns a directory holding links to dir's certificate files
// and no hosts.toml: what containerd's loader reads as containerd 1.6 does
// when it refuses dir's hosts.toml. One directory per set of names.
func (h *hostsCopies) certsOnly(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	names := certFiles(dir)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.init(); err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(dir + "\x00" + strings.Join(names, "\x00")))
	out := filepath.Join(h.base, "certs-"+hex.EncodeToString(sum[:12]))
	if err := os.MkdirAll(out, 0o700); err != nil {
		return "", err
	}
	for _, n := range names {
		if err := os.Symlink(filepath.Join(dir, n), filepath.Join(out, n)); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("certificate files of %s: %w", dir, err)
		}
	}
	return out, nil
}
