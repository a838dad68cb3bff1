package probe

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullwatch/pullwatch/agent/pkg/credentials"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

var indexMediaTypes = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}

func isIndex(mt string) bool { return slices.Contains(indexMediaTypes, mt) }

// indexCache keeps the platforms of indexes by digest. Content is
// addressed by digest, so an entry never goes stale; the cache is only
// bounded.
type indexCache struct {
	mu sync.Mutex
	m  map[string][]ocispec.Platform
}

const maxIndexCache = 4096

func newIndexCache() *indexCache { return &indexCache{m: map[string][]ocispec.Platform{}} }

// checkPlatform reads the index the winning endpoint serves (the only
// manifest GET pullwatch sends: once per index digest the node has not
// pulled, so a moved tag is checked before the node's next pull) and sets
// platform_missing when it lacks the node's platform.
func (p *Prober) checkPlatform(ctx context.Context, res *Result, ref imageref.Ref, w answer, cred credentials.Credential) {
	plats, err := p.indexPlatforms(ctx, ref, w, cred)
	if err != nil {
		// The HEAD answered; the platform check is a refinement. Say so.
		res.Reason += "; platform check failed: " + err.Error()
		return
	}
	match := platforms.Only(*p.opts.Platform)
	for _, pl := range plats {
		if match.Match(pl) {
			return
		}
	}
	names := make([]string, 0, len(plats))
	for _, pl := range plats {
		names = append(names, platforms.Format(pl))
	}
	res.Status = pb.ImageStatus_IMAGE_STATUS_PLATFORM_MISSING
	res.Reason = fmt.Sprintf("index %s at %s has no manifest for this node's platform %s (it has %s)",
		w.digest, w.URL, platforms.Format(*p.opts.Platform), strings.Join(names, ", "))
}

func (p *Prober) indexPlatforms(ctx context.Context, ref imageref.Ref, w answer, cred credentials.Credential) ([]ocispec.Platform, error) {
	dgst, err := digest.Parse(w.digest)
	if err != nil {
		return nil, fmt.Errorf("registry sent digest %q: %w", w.digest, err)
	}
	p.indexes.mu.Lock()
	plats, ok := p.indexes.m[dgst.String()]
	p.indexes.mu.Unlock()
	if ok {
		return plats, nil
	}

	t, err := p.target(w.ep, ref)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	ch, err := p.ping(ctx, t)
	if err != nil {
		return nil, err
	}
	authz, _, err := p.authorize(ctx, ch, t, ref, w.ep, cred)
	if err != nil {
		return nil, err
	}
	u := t.base.JoinPath(t.repo, "manifests", dgst.String())
	req, err := p.newRequest(ctx, http.MethodGet, u.String(), t)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", strings.Join(indexMediaTypes, ", "))
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET index %s answered %s", dgst, resp.Status)
	}
	body, err := io.ReadAll(resp.Body) // bounded by limitedBodies
	if err != nil {
		return nil, fmt.Errorf("read index %s: %w", dgst, err)
	}
	if got := dgst.Algorithm().FromBytes(body); got != dgst {
		return nil, fmt.Errorf("index body has digest %s, not the %s the registry announced", got, dgst)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, fmt.Errorf("index %s is not valid JSON: %w", dgst, err)
	}
	for _, m := range idx.Manifests {
		if m.Platform != nil {
			plats = append(plats, *m.Platform)
		}
	}
	p.indexes.mu.Lock()
	if len(p.indexes.m) >= maxIndexCache {
		clear(p.indexes.m)
	}
	p.indexes.m[dgst.String()] = plats
	p.indexes.mu.Unlock()
	return plats, nil
}
