package footprint

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// compareImages is issue 14's side-by-side size.
const compareImages = 500

// exporterUA starts the user agent of the requests the exporter's way
// sends (go-containerregistry appends its own).
const exporterUA = "remote-head-per-image"

// result is one way of checking the images: what it sent and how long it
// took.
type result struct {
	way       string
	req       requests
	wall      time.Duration
	available int
}

// TestSideBySideRemoteHead checks the same 500 images on the same TLS
// registry with token auth, in one run, two ways: pullwatch's (the real
// `pullwatch-agent check` over the real containerd that holds them: the
// agent's round and prober, unpaced with --registry-rate 0; with
// PULLWATCH_FOOTPRINT=full also at the default --registry-rate 10/s) and
// the exporter's (go-containerregistry's remote.Head per image, one after
// another, a new transport each time: a /v2/ ping, a token and a HEAD per
// image). It logs each way's requests, counted at the registry's access
// log and the token server, and its wall time, and asserts only that
// pullwatch sends fewer requests, and that every image was found
// available both ways.
func TestSideBySideRemoteHead(t *testing.T) {
	l := lab.Need(t)
	t.Logf("load average at start: %s", proc.LoadAvg())
	defer func() { t.Logf("load average at end: %s", proc.LoadAvg()) }()

	ts, reg := tokenRegistry(t, "compare")
	imgs := images(reg, "cmp", compareImages)
	push(t, ts, reg, imgs)
	node := l.FreshNode(t, containerd.Options{Hosts: map[string]string{reg.Addr(): hostsTOML(ts, reg)}})
	pull(t, node, imgs)

	var results []result
	// settle lets the registry write the access log lines of the last
	// answers before the next mark.
	settle := func() { time.Sleep(time.Second) }

	check := func(way string, args ...string) result {
		t.Helper()
		settle()
		a := markNow(t, ts, reg)
		start := time.Now()
		run := node.Check(t, args...)
		wall := time.Since(start)
		settle()
		r := result{way: way, wall: wall, req: between(t, ts, reg, a, markNow(t, ts, reg), "pullwatch")}
		for _, im := range run.Report.Images {
			if im.Status == pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
				r.available++
			}
		}
		if len(run.Report.Images) != len(imgs) || r.available != len(imgs) {
			t.Errorf("%s: %d of %d images reported, %d available; want all available%s", way, len(run.Report.Images), len(imgs), r.available, run.Dump())
		}
		results = append(results, r)
		return r
	}
	pw := check("pullwatch-agent check --registry-rate 0", "--registry-rate", "0")
	if os.Getenv("PULLWATCH_FOOTPRINT") == "full" {
		check("pullwatch-agent check (default rate 10/s)")
	}

	// The exporter's way.
	settle()
	a := markNow(t, ts, reg)
	start := time.Now()
	ex := result{way: "remote.Head per image, new transport each"}
	for _, im := range imgs {
		ref, err := name.ParseReference(im.ref)
		if err != nil {
			t.Fatal(err)
		}
		tr := newTransport(t, ts, reg)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, err = remote.Head(ref, remote.WithContext(ctx), remote.WithAuth(authn.Anonymous), remote.WithTransport(tr), remote.WithUserAgent(exporterUA))
		cancel()
		tr.CloseIdleConnections()
		if err != nil {
			t.Errorf("remote.Head %s: %v", im.ref, err)
			continue
		}
		ex.available++
	}
	ex.wall = time.Since(start)
	settle()
	ex.req = between(t, ts, reg, a, markNow(t, ts, reg), exporterUA)
	results = append(results, ex)

	var table strings.Builder
	fmt.Fprintf(&table, "%d images, %d repositories, one TLS registry with token auth:\n", len(imgs), repoCount(imgs))
	fmt.Fprintf(&table, "%-42s %6s %6s %6s %6s %6s %7s %9s %9s\n", "way", "HEAD", "GET", "/v2/", "token", "other", "total", "wall", "available")
	for _, r := range results {
		fmt.Fprintf(&table, "%-42s %6d %6d %6d %6d %6d %7d %9s %9d\n", r.way, r.req.Heads, r.req.ManifestGets, r.req.Pings, r.req.Tokens, r.req.Other,
			r.req.total(), r.wall.Round(10*time.Millisecond), r.available)
	}
	t.Logf("side by side:\n%s", table.String())
	if pw.req.total() >= ex.req.total() {
		t.Errorf("pullwatch sent %d requests for %d images, remote.Head per image %d; want fewer", pw.req.total(), len(imgs), ex.req.total())
	}
	if pw.req.Heads != len(imgs) {
		t.Errorf("pullwatch sent %d manifest HEADs for %d images; want one each", pw.req.Heads, len(imgs))
	}
}
