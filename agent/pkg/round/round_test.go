package round

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pullwatch/pullwatch/agent/pkg/credentials"
	"github.com/pullwatch/pullwatch/agent/pkg/cri"
	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/agent/pkg/probe"
	"github.com/pullwatch/pullwatch/agent/pkg/report"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

const (
	idA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	idB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	idC = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
	d1  = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	d2  = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

type fakeRuntime struct{ inv *cri.Inventory }

func (f fakeRuntime) Inventory(context.Context) (*cri.Inventory, error) { return f.inv, nil }

// fakeProber answers from a table by reference and records requests.
type fakeProber struct {
	mu   sync.Mutex
	seen []probe.Request
	res  map[string]probe.Result
}

func (f *fakeProber) Probe(_ context.Context, req probe.Request) probe.Result {
	f.mu.Lock()
	f.seen = append(f.seen, req)
	f.mu.Unlock()
	return f.res[req.Ref.String()]
}

type fakeCreds struct{}

func (fakeCreds) Lookup(_ context.Context, ref imageref.Ref, pods []credentials.Pod) ([]credentials.Credential, error) {
	if ref.Repository() == "broken" {
		return nil, errors.New("keyring unreadable")
	}
	if len(pods) == 1 && pods[0].Name == "web" {
		return []credentials.Credential{{Username: "u", Secret: "p", Source: credentials.SourcePullSecret}}, nil
	}
	return nil, nil
}

func TestRun(t *testing.T) {
	inv := &cri.Inventory{
		Runtime: cri.Runtime{Name: "containerd", Version: "1.6.20"},
		Images: []cri.Image{
			{ID: idA, RepoTags: []string{"r.example/app:v1"}, RepoDigests: []string{"r.example/app@" + d1}},
			{ID: idB, RepoTags: []string{"r.example/broken:v1"}},
		},
		Sandboxes: map[string]cri.Sandbox{"s": {ID: "s", Name: "web", Namespace: "shop"}},
		Containers: []cri.Container{
			{ID: "c", Name: "app", PodSandboxID: "s", Image: idA, State: "running"},
			{ID: "g", Name: "ghost", PodSandboxID: "s", Image: idC, State: "exited"},
		},
	}
	checked := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	fp := &fakeProber{res: map[string]probe.Result{
		"r.example/app:v1": {Digest: d2, Outcome: report.Outcome{Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE, Reason: "manifest found", CredentialSource: "pull_secret", CheckedAt: &checked,
			Endpoints: []report.Endpoint{{URL: "https://r.example/v2", Role: hosts.RoleUpstream, Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE}}}},
		"r.example/broken:v1": {Outcome: report.Outcome{Status: pb.ImageStatus_IMAGE_STATUS_ABSENT, Reason: "manifest unknown", CheckedAt: &checked}},
	}}
	c := &Checker{NodeName: "n1", Runtime: fakeRuntime{inv}, Resolver: hosts.Defaults{}, Prober: fp, Credentials: fakeCreds{}}
	node, err := c.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, im := range node.Images {
		got[im.Image] = im.Status.Word()
	}
	if got["r.example/app:v1"] != "available" || got["r.example/broken:v1"] != "absent" || got[idC] != "unknown" {
		t.Fatalf("statuses %v", got)
	}
	for _, im := range node.Images {
		switch im.Image {
		case "r.example/app:v1":
			if !im.Drifted || im.RegistryDigest != d2 || im.Digest != d1 || im.CredentialSource != "pull_secret" || len(im.Endpoints) != 1 || im.CheckedAt == nil {
				t.Errorf("app: %+v", im)
			}
		case "r.example/broken:v1":
			// A credential source that failed is named in the reason of
			// an image that is not available.
			if !strings.Contains(im.Reason, "manifest unknown; some pull credentials could not be read: keyring unreadable") {
				t.Errorf("broken: reason %q", im.Reason)
			}
		case idC:
			if im.CheckedAt != nil || len(im.Pods) != 1 {
				t.Errorf("ghost image: %+v", im)
			}
		}
	}
	// The pod's pull secret went to the probe; the lookup failure did not stop it.
	for _, req := range fp.seen {
		if req.Ref.String() == "r.example/app:v1" && (len(req.Credentials) != 1 || req.NodeDigest != d1) {
			t.Errorf("request for app: %d credentials, node digest %q", len(req.Credentials), req.NodeDigest)
		}
	}
	if node.AllAvailable() {
		t.Error("AllAvailable with an absent image")
	}

	// JSON field names are a contract.
	b, _ := json.Marshal(node)
	for _, field := range []string{`"node":"n1"`, `"runtime":{"name":"containerd"`, `"image":"r.example/app:v1"`, `"in_use":true`, `"status":"available"`, `"endpoints":[{"url":"https://r.example/v2","role":"upstream"`, `"pods":[{"namespace":"shop","pod":"web","container":"app"`, `"drifted":true`} {
		if !strings.Contains(string(b), field) {
			t.Errorf("JSON lacks %s:\n%s", field, b)
		}
	}
	var table bytes.Buffer
	if err := node.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	out := table.String()
	if !strings.Contains(out, "IMAGE") || strings.Index(out, "broken") > strings.Index(out, "r.example/app:v1") || !strings.Contains(out, "3 images: 1 available, 2 not available") {
		t.Errorf("table (failing images first):\n%s", out)
	}
}

// hangingProber never answers before its context ends, as a registry
// behind a firewall that drops would not.
type hangingProber struct{}

func (hangingProber) Probe(ctx context.Context, req probe.Request) probe.Result {
	<-ctx.Done()
	return probe.Result{Outcome: report.Outcome{Status: pb.ImageStatus_IMAGE_STATUS_UNKNOWN, Reason: "probe cut short: " + context.Cause(ctx).Error()}}
}

// TestRunDeadline: a round whose probes never end still ends at its
// deadline, each image unknown saying why, so the agent's liveness does
// not depend on how slow registries are.
func TestRunDeadline(t *testing.T) {
	defer goleak.VerifyNone(t)
	inv := &cri.Inventory{Runtime: cri.Runtime{Name: "containerd"}, Images: []cri.Image{
		{ID: idA, RepoTags: []string{"r.example/a:v1"}}, {ID: idB, RepoTags: []string{"r.example/b:v1"}},
	}}
	c := &Checker{NodeName: "n1", Runtime: fakeRuntime{inv}, Resolver: hosts.Defaults{}, Prober: hangingProber{}, Deadline: 200 * time.Millisecond}
	start := time.Now()
	node, err := c.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("round ended after %s", time.Since(start).Round(time.Millisecond))
	for _, im := range node.Images {
		if im.Status != pb.ImageStatus_IMAGE_STATUS_UNKNOWN || !strings.Contains(im.Reason, "round's deadline (200ms)") {
			t.Errorf("%s: %s %q", im.Image, im.Status.Word(), im.Reason)
		}
	}
}
