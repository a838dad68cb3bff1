package check_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// check runs `check -o json` on the lab node and returns the report and
// the exit code.
func check(t *testing.T, l *lab.Lab) (agentcheck.Report, int) {
	t.Helper()
	r := l.Agent(t, "check", "-o", "json", "--cri-endpoint", l.Containerd.Endpoint(), "--node-name", "e2e-node")
	return r.JSON(t), r.Code
}

// TestCheckOnRealParts walks one node through the statuses the skeleton
// promises: available, then absent once the manifest is deleted, then
// unreachable once the registry is stopped.
func TestCheckOnRealParts(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Images: an app and an init container in a real pod, a cached image
	// no container uses, and one whose manifest will disappear.
	app := l.Reg.Ref("check/app", "v1")
	tools := l.Reg.Ref("check/tools", "1.0")
	cached := l.Reg.Ref("check/cached", "v1")
	gone := l.Reg.Ref("check/gone", "v1")
	for _, p := range []struct{ repo, tag string }{{"check/app", "v1"}, {"check/tools", "1.0"}, {"check/cached", "v1"}} {
		if _, err := registry.PushSleeper(ctx, l.Reg, p.repo, p.tag); err != nil {
			t.Fatal(err)
		}
	}
	goneDigest, err := registry.PushImage(ctx, l.Reg, "check/gone", "v1", registry.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{app, tools, cached, gone} {
		if _, err := l.Containerd.PullImage(ctx, ref, nil); err != nil {
			t.Fatal(err)
		}
	}
	sandbox, err := l.Containerd.RunPod(ctx, containerd.PodSpec{
		Namespace: "shop", Name: "web",
		Containers: []containerd.ContainerSpec{
			{Name: "setup", Image: tools, Init: true, Command: []string{"/sleep", "0"}},
			{Name: "app", Image: app},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Containerd.RemovePod(context.Background(), sandbox) })

	t.Run("available", func(t *testing.T) {
		out, code := check(t, l)
		if out.Node != "e2e-node" || out.Runtime.Name != "containerd" || out.Runtime.Version == "" {
			t.Errorf("node/runtime = %q %+v", out.Node, out.Runtime)
		}
		got := out.Statuses()
		for _, ref := range []string{app, tools, cached, gone} {
			if got[ref] != "available" {
				t.Errorf("%s: status %q, want available (all: %v)", ref, got[ref], got)
			}
		}
		if code != 0 && out.AllAvailable() {
			t.Errorf("exit %d with every image available", code)
		}
		for _, im := range out.Images {
			switch im.Image {
			case app, tools:
				wantContainer := map[string]string{app: "app", tools: "setup"}[im.Image]
				if !im.InUse || len(im.Pods) != 1 || im.Pods[0].Namespace != "shop" || im.Pods[0].Pod != "web" || im.Pods[0].Container != wantContainer {
					t.Errorf("%s: in_use=%v pods=%+v, want shop/web/%s", im.Image, im.InUse, im.Pods, wantContainer)
				}
				if !strings.HasPrefix(im.Digest, "sha256:") {
					t.Errorf("%s: digest %q", im.Image, im.Digest)
				}
			case cached:
				if im.InUse || len(im.Pods) != 0 {
					t.Errorf("%s: cached image reported in use: %+v", im.Image, im.Pods)
				}
			}
			if im.Image == app {
				// containerd's hosts library asks a loopback registry over
				// https first, falling back to http: either scheme is right.
				if len(im.Endpoints) != 1 || im.Endpoints[0].Role != "upstream" || im.Endpoints[0].Status != "available" ||
					!strings.HasSuffix(im.Endpoints[0].URL, "://"+l.Reg.Addr()+"/v2") || im.Endpoints[0].LatencySeconds <= 0 {
					t.Errorf("%s: endpoints %+v", im.Image, im.Endpoints)
				}
			}
		}
	})

	t.Run("absent", func(t *testing.T) {
		if err := registry.DeleteManifest(ctx, l.Reg, "check/gone", goneDigest); err != nil {
			t.Fatal(err)
		}
		out, code := check(t, l)
		got := out.Statuses()
		if got[gone] != "absent" || got[app] != "available" {
			t.Fatalf("statuses %v, want %s absent and %s available", got, gone, app)
		}
		if code != 1 {
			t.Errorf("exit %d, want 1 when an image is absent", code)
		}
		for _, im := range out.Images {
			if im.Image == gone && !strings.Contains(im.Reason, "manifest unknown") {
				t.Errorf("reason %q", im.Reason)
			}
		}
		// The table says the same to a person.
		table := l.Agent(t, "check", "--cri-endpoint", l.Containerd.Endpoint(), "--node-name", "e2e-node").Stdout
		if !strings.Contains(table, "STATUS") || !strings.Contains(table, gone) || !strings.Contains(table, "absent") {
			t.Errorf("table lacks the absent image:\n%s", table)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		if err := l.Reg.Stop(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := l.Reg.Restart(context.Background()); err != nil {
				t.Errorf("restart registry: %v", err)
			}
		})
		out, code := check(t, l)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		for _, im := range out.Images {
			if !strings.HasPrefix(im.Image, l.Reg.Addr()+"/check/") {
				continue
			}
			if im.Status != "unreachable" || !strings.Contains(im.Reason, "connection refused") {
				t.Errorf("%s: %s %q, want unreachable with connection refused", im.Image, im.Status, im.Reason)
			}
		}
	})
}

// TestCheckWithoutRuntime: a CRI endpoint that does not answer is a setup
// error (exit 2) naming what was tried.
func TestCheckWithoutRuntime(t *testing.T) {
	l := lab.Need(t)
	sock := filepath.Join(t.TempDir(), "nothing.sock")
	r := l.Agent(t, "check", "--cri-endpoint", "unix://"+sock)
	stderr, code := r.Stderr, r.Code
	if code != 2 || !strings.Contains(stderr, sock) || !strings.Contains(stderr, "--cri-endpoint") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
}
