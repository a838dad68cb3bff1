// Package hostfs is the node's filesystem as the agent sees it: the node's
// / mounted at --host-root in the agent's container (the DaemonSet: /host),
// as node_exporter's --path.rootfs. Every node file the agent reads — the
// runtime's configuration and the paths named inside it, systemd units,
// resolv.conf, the CA bundle, pull credentials, credential provider
// plugins — is looked up through a Root, so that an absolute path found in
// a node file is the node's path, not the container's.
package hostfs

import (
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// Root is where the node's / is in the agent's container. The zero value
// reads node paths in place (the agent runs on the node itself, or tests).
type Root struct {
	dir string
}

// New returns the Root mounted at dir; "" reads in place.
func New(dir string) Root {
	if dir == "" {
		return Root{}
	}
	return Root{dir: filepath.Clean(dir)}
}

// Dir is the root's directory in the agent's container, "" when node paths
// are read in place.
func (r Root) Dir() string { return r.dir }

// Path returns where the node's path p is in the agent's container. With
// a root, p is taken from the node's / (a relative p too), and symbolic
// links under the root are followed the way the node follows them: an
// absolute link target is a node path, so it stays under the root
// (filepath-securejoin, as runc resolves paths in a container's rootfs).
// Without a root, p is returned as it is. "" stays "".
func (r Root) Path(p string) string {
	if r.dir == "" || p == "" {
		return p
	}
	joined, err := securejoin.SecureJoin(r.dir, p)
	if err != nil {
		// A symlink loop or an unreadable directory: the caller's open
		// fails on the plain path and names it.
		return filepath.Join(r.dir, filepath.Join("/", p))
	}
	return joined
}

// Glob returns the node paths matching pattern, a node path pattern
// (filepath.Match syntax), in lexical order. The matches are node paths:
// pass each through Path to read it.
func (r Root) Glob(pattern string) ([]string, error) {
	if r.dir == "" {
		return filepath.Glob(pattern)
	}
	matches, err := filepath.Glob(filepath.Join(r.dir, filepath.Join("/", pattern)))
	if err != nil {
		return nil, err
	}
	for i, m := range matches {
		matches[i] = r.NodePath(m)
	}
	return matches, nil
}

// NodePath turns a path in the agent's container that lies under the root
// back into the node's path; other paths are returned as they are.
func (r Root) NodePath(p string) string {
	if r.dir == "" {
		return p
	}
	rel, err := filepath.Rel(r.dir, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return p
	}
	return filepath.Join("/", rel)
}
