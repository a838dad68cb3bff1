package registry

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ImageOptions shape the image PushImage builds and how it is pushed.
type ImageOptions struct {
	// Files are extra regular files in the image's one layer (path → content, mode 0644).
	Files map[string][]byte
	// Sleeper adds the sleeper binary at /sleep and /pause and makes
	// ["/sleep"] the default entrypoint, so the image can run (as a pod
	// sandbox image, an app container, or an init container with Command
	// ["/sleep", "0"]).
	Sleeper bool
	// Entrypoint and Cmd go into the image config.
	Entrypoint []string
	Cmd        []string
	// Platform is "os/arch[/variant]"; default "linux/" + runtime.GOARCH
	// (linux/amd64 on the project's machines), so Sleeper images run here.
	Platform string
	// OCI uses OCI media types instead of Docker schema 2.
	OCI bool
	// Username and Password for the push; empty uses reg.Credentials().
	Username, Password string
}

// ImageFile is where every image built here records "repo:tag", so each tag
// gets its own digest.
const ImageFile = "etc/pullwatch-image"

// BuildImage builds (without pushing) the tiny single-platform image
// PushImage would push for repo:tag.
func BuildImage(repo, tag string, opts ImageOptions) (v1.Image, error) {
	plat := opts.Platform
	if plat == "" {
		plat = "linux/" + runtime.GOARCH
	}
	p, err := v1.ParsePlatform(plat)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{ImageFile: []byte(repo + ":" + tag + "\n")}
	for k, v := range opts.Files {
		files[strings.TrimPrefix(k, "/")] = v
	}
	modes := map[string]int64{}
	entrypoint := opts.Entrypoint
	if opts.Sleeper {
		bin, err := SleeperBinary(p.Architecture)
		if err != nil {
			return nil, err
		}
		files["sleep"], files["pause"] = bin, bin
		modes["sleep"], modes["pause"] = 0o755, 0o755
		if entrypoint == nil {
			entrypoint = []string{"/sleep"}
		}
	}
	layerTar, err := tarFiles(files, modes)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	base := empty.Image
	layerType := types.DockerLayer
	if opts.OCI {
		base = mutate.MediaType(base, types.OCIManifestSchema1)
		base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
		layerType = types.OCILayer
	}
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, MediaType: layerType})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = entrypoint
	cf.Config.Cmd = opts.Cmd
	cf.Config.Env = []string{"PATH=/"}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.title": repo + ":" + tag}
	return mutate.ConfigFile(img, cf)
}

// PushImage builds a tiny single-platform image (one layer holding
// ImageFile and opts.Files) and pushes it as reg/repo:tag. It returns the
// manifest digest ("sha256:…").
func PushImage(ctx context.Context, reg *Registry, repo, tag string, opts ImageOptions) (string, error) {
	img, err := BuildImage(repo, tag, opts)
	if err != nil {
		return "", err
	}
	ref, err := name.ParseReference(reg.Ref(repo, tag))
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img, reg.remoteOptions(ctx, opts.Username, opts.Password)...); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

// BuildIndex builds (without pushing) the multi-platform index PushIndex
// would push: one image per platform ("os/arch[/variant]"), each built by
// BuildImage with opts and that platform, listed with its platform. The
// index is an OCI index with opts.OCI, else a Docker manifest list.
func BuildIndex(repo, tag string, platforms []string, opts ImageOptions) (v1.ImageIndex, error) {
	if len(platforms) == 0 {
		return nil, fmt.Errorf("index %s:%s: no platforms", repo, tag)
	}
	var base v1.ImageIndex = empty.Index
	if !opts.OCI {
		base = mutate.IndexMediaType(base, types.DockerManifestList)
	}
	adds := make([]mutate.IndexAddendum, 0, len(platforms))
	for _, plat := range platforms {
		p, err := v1.ParsePlatform(plat)
		if err != nil {
			return nil, err
		}
		o := opts
		o.Platform = plat
		img, err := BuildImage(repo, tag, o)
		if err != nil {
			return nil, fmt.Errorf("index %s:%s, platform %s: %w", repo, tag, plat, err)
		}
		mt, err := img.MediaType()
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{MediaType: mt, Platform: p}})
	}
	return mutate.AppendManifests(base, adds...), nil
}

// PushIndex pushes a multi-platform index (see BuildIndex) as
// reg/repo:tag, with its per-platform images, and returns the index
// digest ("sha256:…"), which is what a runtime records as the repo digest.
func PushIndex(ctx context.Context, reg *Registry, repo, tag string, platforms []string, opts ImageOptions) (string, error) {
	idx, err := BuildIndex(repo, tag, platforms, opts)
	if err != nil {
		return "", err
	}
	ref, err := name.ParseReference(reg.Ref(repo, tag))
	if err != nil {
		return "", err
	}
	if err := remote.WriteIndex(ref, idx, reg.remoteOptions(ctx, opts.Username, opts.Password)...); err != nil {
		return "", fmt.Errorf("push index %s: %w", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

// PushSleeper pushes an image whose entrypoint ["/sleep"] sleeps until
// SIGTERM (/pause is the same binary): usable as the pod sandbox image and
// as an app image. Run it with Command ["/sleep", "0"] for an init
// container that exits at once.
func PushSleeper(ctx context.Context, reg *Registry, repo, tag string) (string, error) {
	return PushImage(ctx, reg, repo, tag, ImageOptions{Sleeper: true})
}

// RemoteOptions are go-containerregistry options to reach reg (its CA, its
// first user's credentials unless user is given, ctx).
func (r *Registry) RemoteOptions(ctx context.Context, user, pass string) []remote.Option {
	return r.remoteOptions(ctx, user, pass)
}

func (r *Registry) remoteOptions(ctx context.Context, user, pass string) []remote.Option {
	if user == "" {
		user, pass, _ = r.Credentials()
	}
	var auth authn.Authenticator = authn.Anonymous
	if user != "" {
		auth = &authn.Basic{Username: user, Password: pass}
	}
	return []remote.Option{remote.WithContext(ctx), remote.WithAuth(auth), remote.WithTransport(r.Transport())}
}

// DeleteManifest deletes repo's manifest by digest through the registry API
// (DELETE /v2/<repo>/manifests/<digest>), with reg's default credentials.
// Tags pointing at it go with it.
func DeleteManifest(ctx context.Context, reg *Registry, repo, digest string) error {
	resp, err := reg.Do(ctx, http.MethodDelete, "/v2/"+repo+"/manifests/"+digest, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("DELETE %s manifest %s: %s: %s", repo, digest, resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// ManifestStatus HEADs /v2/<repo>/manifests/<ref> (tag or digest) with the
// usual manifest Accept headers and reg's default credentials; it returns
// the HTTP status and the Docker-Content-Digest header.
func ManifestStatus(ctx context.Context, reg *Registry, repo, ref string) (int, string, error) {
	h := http.Header{}
	for _, mt := range []types.MediaType{types.DockerManifestSchema2, types.DockerManifestList, types.OCIManifestSchema1, types.OCIImageIndex} {
		h.Add("Accept", string(mt))
	}
	resp, err := reg.Do(ctx, http.MethodHead, "/v2/"+repo+"/manifests/"+ref, h)
	if err != nil {
		return 0, "", err
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), nil
}

// Do sends one request to the registry (path like "/v2/"), with basic auth
// from reg.Credentials() when there are any.
func (r *Registry) Do(ctx context.Context, method, urlPath string, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, r.URL()+urlPath, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if u, p, ok := r.Credentials(); ok {
		req.SetBasicAuth(u, p)
	}
	return r.HTTPClient().Do(req)
}

// tarFiles builds an uncompressed tar with the files (and their parent
// directories), in a fixed order with fixed times.
func tarFiles(files map[string][]byte, modes map[string]int64) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0).UTC()
	names := make([]string, 0, len(files))
	dirs := map[string]bool{}
	for n := range files {
		names = append(names, n)
		for d := path.Dir(n); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	dirNames := make([]string, 0, len(dirs))
	for d := range dirs {
		dirNames = append(dirNames, d)
	}
	sort.Strings(dirNames)
	sort.Strings(names)
	for _, d := range dirNames {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	for _, n := range names {
		mode := modes[n]
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: mode, Size: int64(len(files[n])), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(files[n]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
