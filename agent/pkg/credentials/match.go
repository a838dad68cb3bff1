package credentials

import (
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
)

// This file is the kubelet's keyring matcher, written again because
// k8s.io/kubernetes cannot be imported: BasicDockerKeyring.Add/Lookup,
// URLsMatchStr and isDefaultRegistryMatch in
// k8s.io/kubernetes/pkg/credentialprovider/keyring.go (unchanged in
// behaviour from 1.2x through 1.35). The same rules apply to every source:
// pull secrets, the node's config.json/.dockercfg, and the auth patterns
// credential provider plugins return. The kubelet matches the image's
// repository name as the pod spec names it, normalized and without tag or
// digest ("docker.io/library/nginx", "127.0.0.1:5000/demo/app"), which is
// imageref.Ref.Name().

// userPass is one credential found under a keyring key.
type userPass struct {
	username, password string
}

// entry is one key of a docker config ("https://index.docker.io/v1/",
// "quay.io/org", "*.example.com") with its credential.
type entry struct {
	key string
	userPass
}

// keyring indexes credentials by registry key, most specific key first.
type keyring struct {
	// index holds the distinct keys, reverse-sorted so that
	// "quay.io/coreos" is tried before "quay.io".
	index []string
	globs map[string]*url.URL
	creds map[string][]userPass
	// skipped says which files of the search path were skipped because
	// they do not parse (the kubelet skips them too); Lookup returns it
	// so an image that is not available says why its pull may lack
	// credentials.
	skipped error
}

// defaultRegistryHost is the key Docker Hub credentials end up under
// ("https://index.docker.io/v1/", "index.docker.io/v1/", "index.docker.io"
// all reduce to it).
const defaultRegistryHost = "index.docker.io"

// add indexes entries the way BasicDockerKeyring.Add does: a key without
// scheme gets https://, the scheme is then dropped, a leading /v1/ or /v2/
// path is the registry root, and a key that does not parse as a URL is
// skipped (the kubelet logs and ignores it; so do the callers).
func (k *keyring) add(entries []entry) {
	if k.creds == nil {
		k.creds = map[string][]userPass{}
		k.globs = map[string]*url.URL{}
	}
	for _, e := range entries {
		key, ok := keyringKey(e.key)
		if !ok {
			continue
		}
		if _, seen := k.creds[key]; !seen {
			k.index = append(k.index, key)
			if g, err := parseSchemeless(key); err == nil {
				k.globs[key] = g
			}
		}
		k.creds[key] = append(k.creds[key], e.userPass)
	}
	slices.Sort(k.index)
	slices.Reverse(k.index)
}

// keyringKey reduces a docker config key to the kubelet's index key.
func keyringKey(loc string) (string, bool) {
	value := loc
	if !strings.HasPrefix(value, "https://") && !strings.HasPrefix(value, "http://") {
		value = "https://" + value
	}
	parsed, err := url.Parse(value)
	if err != nil {
		return "", false
	}
	// The docker client allows exact matches (foo.bar.com/namespace) and
	// host matches (foo.bar.com), and treats /v1/ and /v2/ as the host.
	path := parsed.Path
	if strings.HasPrefix(path, "/v2/") || strings.HasPrefix(path, "/v1/") {
		path = path[3:]
	}
	if path != "" && path != "/" {
		return parsed.Host + path, true
	}
	return parsed.Host, true
}

// lookup returns the credentials for image in the kubelet's order: every
// matching key, most specific first, each key's credentials in the order
// they were added; when nothing matches and the image is on Docker Hub,
// the index.docker.io credentials.
func (k *keyring) lookup(image string) []userPass {
	target, err := parseSchemeless(image)
	if err != nil {
		return nil
	}
	var out []userPass
	for _, key := range k.index {
		if g := k.globs[key]; g != nil && urlsMatch(g, target) {
			out = append(out, k.creds[key]...)
		}
	}
	if len(out) > 0 {
		return out
	}
	if isDefaultRegistryMatch(image) {
		return append(out, k.creds[defaultRegistryHost]...)
	}
	return nil
}

// matchImage reports whether image matches one glob (a credential
// provider's matchImages entry), as the kubelet's URLsMatchStr does.
func matchImage(glob, image string) bool {
	g, err := parseSchemeless(glob)
	if err != nil {
		return false
	}
	t, err := parseSchemeless(image)
	if err != nil {
		return false
	}
	return urlsMatch(g, t)
}

// parseSchemeless parses a URL without scheme (the kubelet adds https://
// for url.Parse and clears the scheme again).
func parseSchemeless(s string) (*url.URL, error) {
	u, err := url.Parse("https://" + s)
	if err != nil {
		return nil, err
	}
	u.Scheme = ""
	return u, nil
}

// urlsMatch is the kubelet's URLsMatch: the ports must be equal, the hosts
// must have as many dot-separated parts, each host part of the target must
// match the glob's part with filepath.Match (so "*.example.com" matches
// "a.example.com" but not "a.b.example.com" nor "example.com"), and the
// glob's path must be a string prefix of the target's path (no wildcards in
// ports or paths).
func urlsMatch(glob, target *url.URL) bool {
	globParts, globPort := splitHost(glob)
	targetParts, targetPort := splitHost(target)
	if globPort != targetPort || len(globParts) != len(targetParts) {
		return false
	}
	if !strings.HasPrefix(target.Path, glob.Path) {
		return false
	}
	for i, gp := range globParts {
		if ok, err := filepath.Match(gp, targetParts[i]); err != nil || !ok {
			return false
		}
	}
	return true
}

func splitHost(u *url.URL) ([]string, string) {
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		host, port = u.Host, ""
	}
	return strings.Split(host, "."), port
}

// isDefaultRegistryMatch reports whether image would be pulled from Docker
// Hub judging by its name: no registry part, or docker.io /
// index.docker.io, or a first component without "." or ":".
func isDefaultRegistryMatch(image string) bool {
	first, _, hasSlash := strings.Cut(image, "/")
	if first == "" {
		return false
	}
	if !hasSlash {
		return true
	}
	if _, dockerHub := imageref.APIHost(first); dockerHub {
		return true
	}
	return !strings.ContainsAny(first, ".:")
}
