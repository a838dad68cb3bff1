// Package round runs one check of a node: read the runtime's inventory,
// resolve each reference's registry endpoints as the runtime would, probe
// them, and assemble the node's report.
package round

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullwatch/pullwatch/agent/pkg/credentials"
	"github.com/pullwatch/pullwatch/agent/pkg/cri"
	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/agent/pkg/probe"
	"github.com/pullwatch/pullwatch/agent/pkg/report"
	"github.com/pullwatch/pullwatch/pkg/logging"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Inventory is the runtime side (cri.Client).
type Inventory interface {
	Inventory(ctx context.Context) (*cri.Inventory, error)
}

// Prober is the registry side (probe.Prober).
type Prober interface {
	Probe(ctx context.Context, req probe.Request) probe.Result
}

// Reacher pings an image's endpoints without asking for the manifest
// (probe.Prober.Reach): probe sharding's per-node reachability signal.
type Reacher interface {
	Reach(ctx context.Context, round *probe.Round, ref imageref.Ref, endpoints []hosts.Endpoint) bool
}

// Checker runs rounds.
type Checker struct {
	NodeName string
	Runtime  Inventory
	Resolver hosts.Resolver
	Prober   Prober
	// Credentials default to none (anonymous pulls).
	Credentials credentials.Provider
	// Concurrency bounds probes in flight across all registries (per-host
	// limits are the prober's, and taken first). Default 16.
	Concurrency int
	// Deadline bounds the round's probes (0: none). An image whose probe
	// has not ended by then is reported unknown, saying so: the round
	// always ends, and the agent's liveness does not depend on how slow
	// registries are.
	Deadline time.Duration
	Now      func() time.Time
	// Platform is the node's.
	Platform ocispec.Platform
	// Labels describe the node to the aggregator (e.g. its zone).
	Labels map[string]string
	// Plan paces manifest checks per registry and carries the
	// aggregator's probe sharding; nil checks every image every round,
	// unpaced.
	Plan *Plan

	mu   sync.Mutex
	last map[string]checked // by reference: the node's own last check
}

// checked is the node's own last check of an image.
type checked struct {
	res  probe.Result
	urls []string
}

// Run checks every image on the node once. Every image in the report has
// been probed in this round: none is reported available before its check.
func (c *Checker) Run(ctx context.Context) (report.Node, error) {
	now := c.Now
	if now == nil {
		now = time.Now
	}
	inv, err := c.Runtime.Inventory(ctx)
	if err != nil {
		return report.Node{}, fmt.Errorf("read the runtime's inventory: %w", err)
	}
	entries := inv.Entries()
	images := make([]report.Image, len(entries))

	workers := c.Concurrency
	if workers <= 0 {
		workers = 16
	}
	pctx := ctx
	if c.Deadline > 0 {
		var cancel context.CancelFunc
		pctx, cancel = context.WithTimeoutCause(ctx, c.Deadline, fmt.Errorf("the round's deadline (%s) was reached first", c.Deadline))
		defer cancel()
	}
	// Every image gets its goroutine: a probe waits for its endpoint
	// host's slot and then for one of the round's (probe.Round), so
	// images of a hung registry never hold the slots the others need.
	// Resolving endpoints is bounded on its own.
	rnd := probe.NewRound(workers)
	var warned sync.Map // credential problems logged this round
	prep := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for i, e := range entries {
		images[i] = baseImage(e)
		if e.Problem != "" {
			images[i].Status, images[i].Reason = pb.ImageStatus_IMAGE_STATUS_UNKNOWN, e.Problem
			continue
		}
		wg.Go(func() {
			prep <- struct{}{}
			eps, err := c.Resolver.Endpoints(pctx, e.Ref)
			if err != nil {
				<-prep
				images[i].Status = pb.ImageStatus_IMAGE_STATUS_UNKNOWN
				images[i].Reason = fmt.Sprintf("resolve registry endpoints for %s: %v", e.Ref.Registry(), err)
				return
			}
			<-prep
			// Outside the bound: a credential provider plugin that hangs
			// (until its timeout) holds up only the images it serves.
			var creds []credentials.Credential
			var credErr error
			if !e.RuntimePulls() {
				creds, credErr = c.credentials().Lookup(pctx, e.Ref, pods(e.Uses))
			}
			if credErr != nil {
				if _, dup := warned.LoadOrStore(credErr.Error(), true); !dup {
					// The kubelet pulls with what it found; so do we, and say
					// so (once per problem and round, not once per image).
					logging.FromContext(ctx).WarnContext(ctx, "some pull credentials could not be read; probing with those found", "image", e.Ref.String(), "found", len(creds), logging.ErrKey, credErr)
				}
			}
			c.check(pctx, &images[i], e, eps, creds, rnd, credErr)
		})
	}
	wg.Wait()
	c.forget(entries)
	rt := report.Runtime{Name: inv.Runtime.Name, Version: inv.Runtime.Version, APIVersion: inv.Runtime.APIVersion, Endpoint: inv.Runtime.Endpoint}
	n := report.Node{Node: c.NodeName, Runtime: rt, Platform: c.Platform, Labels: c.Labels, ObservedAt: now(), Images: images}.Sanitized()
	logging.FromContext(ctx).DebugContext(ctx, "round done", "images", len(images), "all_available", n.AllAvailable())
	return n, nil
}

// check probes one image, unless probe sharding leaves it to other nodes
// (it reached every endpoint: the report is delegated, with its own last
// result) or the registry's cluster-wide budget or hold says not now (the
// report is its own last result). An image never checked is always
// probed.
func (c *Checker) check(ctx context.Context, im *report.Image, e cri.Entry, eps []hosts.Endpoint, creds []credentials.Credential, rnd *probe.Round, credErr error) {
	ref := e.Ref.String()
	host := e.Ref.Registry()
	urls := make([]string, len(eps))
	for i, ep := range eps {
		urls[i] = ep.URL
	}
	c.mu.Lock()
	last, ok := c.last[ref]
	c.mu.Unlock()
	if ok && !slices.Equal(last.urls, urls) {
		ok = false // the runtime's endpoints changed: check afresh
	}
	if ok {
		if r, can := c.Prober.(Reacher); can && c.Plan.Delegated(pb.ProbeKeyString(ref, last.res.CredentialSource, urls)) && r.Reach(ctx, rnd, e.Ref, eps) {
			applyResult(im, e, last.res)
			im.Delegated = true
			return
		}
		if !c.Plan.Admit(host) {
			applyResult(im, e, last.res)
			return
		}
	}
	if err := c.Plan.Wait(ctx, host); err != nil {
		im.Status, im.Reason = pb.ImageStatus_IMAGE_STATUS_UNKNOWN, "check cancelled: "+err.Error()
		return
	}
	res := c.Prober.Probe(ctx, probe.Request{Ref: e.Ref, Endpoints: eps, Credentials: creds, NodeDigest: e.Digest, Round: rnd})
	if res.Status == pb.ImageStatus_IMAGE_STATUS_UNAUTHORIZED || res.Status == pb.ImageStatus_IMAGE_STATUS_FORBIDDEN {
		if tp, ok := c.credentials().(credentials.TokenProviders); ok && !e.RuntimePulls() {
			if name := tp.NeedsServiceAccountToken(e.Ref); name != "" {
				// The kubelet pulls it with that provider's credentials,
				// which pullwatch cannot get: it cannot tell, and says so
				// rather than raise a false unauthorized.
				res.Status = pb.ImageStatus_IMAGE_STATUS_UNKNOWN
				res.Reason = fmt.Sprintf("the kubelet pulls this image with credentials from credential provider %q, which needs the pod's service account token (tokenAttributes, KEP-4412) that pullwatch cannot mint; without them: %s", name, res.Reason)
			}
		}
	}
	if credErr != nil && res.Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
		// A broken credential source (a config.json that does not
		// parse, a plugin that hangs or prints garbage) may be why:
		// the image's reason names it.
		res.Reason += "; some pull credentials could not be read: " + credErr.Error()
	}
	applyResult(im, e, res)
	if ctx.Err() == nil {
		c.mu.Lock()
		if c.last == nil {
			c.last = map[string]checked{}
		}
		c.last[ref] = checked{res: res, urls: urls}
		c.mu.Unlock()
	}
}

// forget drops the last checks of images the node no longer has.
func (c *Checker) forget(entries []cri.Entry) {
	keep := make(map[string]bool, len(entries))
	for _, e := range entries {
		if e.Problem == "" {
			keep[e.Ref.String()] = true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for ref := range c.last {
		if !keep[ref] {
			delete(c.last, ref)
		}
	}
}

func (c *Checker) credentials() credentials.Provider {
	if c.Credentials == nil {
		return credentials.None{}
	}
	return c.Credentials
}

// pods are the distinct pods among an image's uses.
func pods(uses []cri.Use) []credentials.Pod {
	var out []credentials.Pod
	seen := map[credentials.Pod]bool{}
	for _, u := range uses {
		p := credentials.Pod{Namespace: u.Namespace, Name: u.Pod, UID: u.PodUID}
		if p.Name != "" && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func baseImage(e cri.Entry) report.Image {
	im := report.Image{
		ImageID:     e.ImageID,
		RepoDigests: e.RepoDigests,
		Digest:      e.Digest,
		InUse:       e.InUse(),
		Outcome:     report.Outcome{Endpoints: []report.Endpoint{}},
		Pods:        make([]report.Pod, len(e.Uses)),
	}
	for i, u := range e.Uses {
		im.Pods[i] = report.Pod{Namespace: u.Namespace, Pod: u.Pod, PodUID: u.PodUID, Container: u.Container, ContainerID: u.ContainerID, State: u.State}
	}
	if e.Problem == "" {
		im.Image = e.Ref.String()
		im.Registry = e.Ref.Registry()
	} else {
		im.Image = e.ImageID
	}
	return im
}

// applyResult puts the probe's answer into the image's report and compares
// the digest the registry serves with the node's.
func applyResult(im *report.Image, e cri.Entry, res probe.Result) {
	im.Outcome = res.Outcome
	if im.Endpoints == nil {
		im.Endpoints = []report.Endpoint{}
	}
	// Tag drift: the tag now points at another manifest than the node runs.
	if res.Digest != "" && e.Ref.Digest() == "" && e.Digest != "" && res.Digest != e.Digest {
		im.Drifted = true
		im.RegistryDigest = res.Digest
	}
}
