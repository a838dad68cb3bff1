package credentials

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/pkg/logging"

	"github.com/pullwatch/pullwatch/pkg/dockerauth"
)

// configFile is one place the node keyring may come from.
type configFile struct {
	path string
	// legacy is the .dockercfg format (the auths map itself).
	legacy bool
}

// KubeletRootDir is the kubelet's default --root-dir, the first directory
// of its keyring search path.
const KubeletRootDir = "/var/lib/kubelet"

// defaultKeyringSearchPath is where the kubelet looks for the node's
// keyring, in its order (k8s.io/kubernetes/pkg/credentialprovider
// config.go: DefaultDockerConfigJSONPaths, then DefaultDockercfgPaths):
// config.json in its root dir, its working directory ("/" for a kubelet
// run by systemd), $HOME/.docker (HOME=/root: the kubelet runs as root)
// and /.docker; then .dockercfg in its root dir, working directory, $HOME
// and /. The first file that exists and parses wins; the others are not
// read. Each is a node path, read under root.
func defaultKeyringSearchPath(root hostfs.Root) []configFile {
	var out []configFile
	for _, p := range DefaultKeyringSearchPath() {
		out = append(out, configFile{path: root.Path(p), legacy: filepath.Base(p) == ".dockercfg"})
	}
	return dedupeFiles(out)
}

// DefaultKeyringSearchPath is the kubelet's keyring search path, node
// paths in its order (see defaultKeyringSearchPath).
func DefaultKeyringSearchPath() []string {
	var out []string
	for _, dir := range []string{KubeletRootDir, "/", "/root/.docker", "/.docker"} {
		out = append(out, filepath.Join(dir, "config.json"))
	}
	for _, dir := range []string{KubeletRootDir, "/", "/root", "/"} {
		out = append(out, filepath.Join(dir, ".dockercfg"))
	}
	return out
}

// keyringFiles is what --docker-config names: a file (config.json format,
// unless it is called .dockercfg), or a directory holding config.json or
// .dockercfg.
func keyringFiles(dockerConfig string) []configFile {
	if st, err := os.Stat(dockerConfig); err == nil && st.IsDir() {
		return []configFile{
			{path: filepath.Join(dockerConfig, "config.json")},
			{path: filepath.Join(dockerConfig, ".dockercfg"), legacy: true},
		}
	}
	return []configFile{{path: dockerConfig, legacy: filepath.Base(dockerConfig) == ".dockercfg"}}
}

func dedupeFiles(in []configFile) []configFile {
	seen := map[string]bool{}
	var out []configFile
	for _, f := range in {
		if !seen[f.path] {
			seen[f.path] = true
			out = append(out, f)
		}
	}
	return out
}

// KeyringOptions configure a NodeKeyring.
type KeyringOptions struct {
	// DockerConfig replaces the kubelet's search path with one file or
	// directory (--docker-config), as the agent sees it.
	DockerConfig string
	// Root is where the node's root filesystem is mounted in the agent's
	// container (--host-root); the default search path is read under it.
	Root hostfs.Root
	// Recheck is how long a loaded keyring is used before the files are
	// looked at again. Default 10s.
	Recheck time.Duration
	Log     *slog.Logger
	Now     func() time.Time
}

// NodeKeyring is the node's own credentials: the kubelet's config.json /
// .dockercfg. It re-reads the files when they change.
type NodeKeyring struct {
	files   []configFile
	recheck time.Duration
	log     *slog.Logger
	now     func() time.Time

	mu        sync.Mutex
	checked   time.Time
	stamp     string // identity of the files as last loaded
	keyring   *dockerauth.Keyring
	skipped   error        // files of the search path skipped as not parsing, as last loaded
	reported  logging.Once // problems already logged, by file stamp
	sourceLog string       // the file in use, as last logged
}

// NewNodeKeyring returns the node keyring; files are read on first use.
func NewNodeKeyring(opts KeyringOptions) *NodeKeyring {
	k := &NodeKeyring{recheck: opts.Recheck, log: opts.Log, now: opts.Now}
	if opts.DockerConfig != "" {
		k.files = keyringFiles(opts.DockerConfig)
	} else {
		k.files = defaultKeyringSearchPath(opts.Root)
	}
	if k.recheck <= 0 {
		k.recheck = 10 * time.Second
	}
	if k.log == nil {
		k.log = slog.Default()
	}
	if k.now == nil {
		k.now = time.Now
	}
	return k
}

// Files is the search path, in order.
func (k *NodeKeyring) Files() []string {
	out := make([]string, len(k.files))
	for i, f := range k.files {
		out[i] = f.path
	}
	return out
}

// Lookup implements Provider: the node keyring's credentials for ref.
// Problems with the files are logged (once per file version), not
// returned: like the kubelet, a broken file is skipped and the next one
// on the search path is used.
func (k *NodeKeyring) Lookup(ctx context.Context, ref imageref.Ref, _ []Pod) ([]Credential, error) {
	kr := k.current(ctx)
	var out []Credential
	for _, up := range kr.Lookup(ref.Name()) {
		out = append(out, Credential{Username: up.Username, Secret: up.Password, Source: SourceNodeKeyring})
	}
	return out, k.skippedErr()
}

// skippedErr names the files of the search path skipped because they do
// not parse (the kubelet skips them too), so an image that is not
// available says why its pull may lack credentials.
func (k *NodeKeyring) skippedErr() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.skipped
}

// current returns the keyring, reloading it when the files changed.
func (k *NodeKeyring) current(ctx context.Context) *dockerauth.Keyring {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	if k.keyring != nil && now.Sub(k.checked) < k.recheck {
		return k.keyring
	}
	k.checked = now
	stamp := k.stampFiles()
	if k.keyring != nil && stamp == k.stamp {
		return k.keyring
	}
	k.stamp = stamp
	k.keyring = k.load(ctx)
	return k.keyring
}

// stampFiles identifies the current version of every file on the search
// path (presence, size, modification time), so an unchanged keyring is not
// parsed again.
func (k *NodeKeyring) stampFiles() string {
	var b []byte
	for _, f := range k.files {
		st, err := os.Stat(f.path)
		if err != nil {
			b = fmt.Appendf(b, "%s:-;", f.path)
			continue
		}
		b = fmt.Appendf(b, "%s:%d:%d;", f.path, st.Size(), st.ModTime().UnixNano())
	}
	return string(b)
}

// load reads the search path as the kubelet does: the first file that
// exists and parses wins, even when it holds no credentials.
func (k *NodeKeyring) load(ctx context.Context) *dockerauth.Keyring {
	kr := &dockerauth.Keyring{}
	var skipped error
	defer func() { k.skipped = skipped }()
	for _, f := range k.files {
		data, err := readBounded(f.path)
		if errors.Is(err, fs.ErrNotExist) || (err == nil && len(data) == 0) {
			// An empty file is invalid JSON to the kubelet, which skips it
			// too; it is what a hostPath mount of type FileOrCreate leaves
			// on a node without a keyring, so it is not worth a complaint.
			continue
		}
		var cfg dockerauth.Config
		if err == nil {
			if f.legacy {
				cfg, err = dockerauth.ParseDockercfg(data)
			} else {
				cfg, err = dockerauth.ParseConfigJSON(data)
			}
		}
		if err != nil {
			k.reportOnce(ctx, f.path, slog.LevelError, "node keyring file skipped, as the kubelet skips it; fix or remove the file",
				"file", f.path, logging.ErrKey, err.Error())
			skipped = errors.Join(skipped, fmt.Errorf("node keyring %s skipped, as the kubelet skips it: %w", f.path, err))
			continue
		}
		if len(cfg.Ignored) > 0 {
			k.reportOnce(ctx, f.path+"#ignored", slog.LevelDebug, "node keyring: parts the kubelet does not use are ignored",
				"file", f.path, "ignored", cfg.Ignored)
		}
		kr.Add(cfg.Entries)
		if k.sourceLog != f.path {
			k.sourceLog = f.path
			k.log.InfoContext(ctx, "node keyring loaded", "file", f.path, "registries", kr.Len())
		}
		return kr
	}
	if k.sourceLog != "-" {
		k.sourceLog = "-"
		k.log.InfoContext(ctx, "no node keyring file found; the node pulls without node credentials", "searched", k.Files())
	}
	return kr
}

// reportOnce logs a problem once per version of the files.
func (k *NodeKeyring) reportOnce(ctx context.Context, what string, level slog.Level, msg string, args ...any) {
	k.reported.Log(ctx, k.log, k.stamp+"|"+what, level, msg, args...)
}

// readBounded reads a regular file of at most dockerauth.MaxConfigBytes.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, dockerauth.MaxConfigBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > dockerauth.MaxConfigBytes {
		return nil, fmt.Errorf("larger than %d bytes; a docker config is a few KiB", dockerauth.MaxConfigBytes)
	}
	return data, nil
}
