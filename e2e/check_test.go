package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// checkOutput is the part of `check -o json` the tests read; the field
// names are the contract users rely on.
type checkOutput struct {
	Node    string `json:"node"`
	Runtime struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"runtime"`
	Images []struct {
		Image     string `json:"image"`
		Digest    string `json:"digest"`
		InUse     bool   `json:"in_use"`
		Status    string `json:"status"`
		Reason    string `json:"reason"`
		Endpoints []struct {
			URL            string  `json:"url"`
			Role           string  `json:"role"`
			Status         string  `json:"status"`
			LatencySeconds float64 `json:"latency_seconds"`
		} `json:"endpoints"`
		Pods []struct {
			Namespace string `json:"namespace"`
			Pod       string `json:"pod"`
			Container string `json:"container"`
		} `json:"pods"`
	} `json:"images"`
}

// runAgent runs pullwatch-agent with args and returns stdout, stderr and
// the exit code.
func runAgent(t *testing.T, l *lab, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(l.bin, "pullwatch-agent"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run pullwatch-agent %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

func check(t *testing.T, l *lab) (checkOutput, int) {
	t.Helper()
	stdout, stderr, code := runAgent(t, l, "check", "-o", "json", "--cri-endpoint", l.containerd.Endpoint(), "--node-name", "e2e-node")
	return parseCheck(t, stdout, stderr), code
}

// parseCheck decodes `check -o json` output, failing with both streams.
func parseCheck(t *testing.T, stdout, stderr string) checkOutput {
	t.Helper()
	var out checkOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("check -o json printed no JSON: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	return out
}

func statuses(out checkOutput) map[string]string {
	m := map[string]string{}
	for _, im := range out.Images {
		m[im.Image] = im.Status
	}
	return m
}

// TestCheckOnRealParts walks one node through the statuses the skeleton
// promises: available, then absent once the manifest is deleted, then
// unreachable once the registry is stopped.
func TestCheckOnRealParts(t *testing.T) {
	l := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Images: an app and an init container in a real pod, a cached image
	// no container uses, and one whose manifest will disappear.
	app := l.reg.Ref("check/app", "v1")
	tools := l.reg.Ref("check/tools", "1.0")
	cached := l.reg.Ref("check/cached", "v1")
	gone := l.reg.Ref("check/gone", "v1")
	for _, p := range []struct{ repo, tag string }{{"check/app", "v1"}, {"check/tools", "1.0"}, {"check/cached", "v1"}} {
		if _, err := registry.PushSleeper(ctx, l.reg, p.repo, p.tag); err != nil {
			t.Fatal(err)
		}
	}
	goneDigest, err := registry.PushImage(ctx, l.reg, "check/gone", "v1", registry.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{app, tools, cached, gone} {
		if _, err := l.containerd.PullImage(ctx, ref, nil); err != nil {
			t.Fatal(err)
		}
	}
	sandbox, err := l.containerd.RunPod(ctx, containerd.PodSpec{
		Namespace: "shop", Name: "web",
		Containers: []containerd.ContainerSpec{
			{Name: "setup", Image: tools, Init: true, Command: []string{"/sleep", "0"}},
			{Name: "app", Image: app},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.containerd.RemovePod(context.Background(), sandbox) })

	t.Run("available", func(t *testing.T) {
		out, code := check(t, l)
		if out.Node != "e2e-node" || out.Runtime.Name != "containerd" || out.Runtime.Version == "" {
			t.Errorf("node/runtime = %q %+v", out.Node, out.Runtime)
		}
		got := statuses(out)
		for _, ref := range []string{app, tools, cached, gone} {
			if got[ref] != "available" {
				t.Errorf("%s: status %q, want available (all: %v)", ref, got[ref], got)
			}
		}
		if code != 0 && allAvailable(out) {
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
					!strings.HasSuffix(im.Endpoints[0].URL, "://"+l.reg.Addr()+"/v2") || im.Endpoints[0].LatencySeconds <= 0 {
					t.Errorf("%s: endpoints %+v", im.Image, im.Endpoints)
				}
			}
		}
	})

	t.Run("absent", func(t *testing.T) {
		if err := registry.DeleteManifest(ctx, l.reg, "check/gone", goneDigest); err != nil {
			t.Fatal(err)
		}
		out, code := check(t, l)
		got := statuses(out)
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
		table, _, _ := runAgent(t, l, "check", "--cri-endpoint", l.containerd.Endpoint(), "--node-name", "e2e-node")
		if !strings.Contains(table, "STATUS") || !strings.Contains(table, gone) || !strings.Contains(table, "absent") {
			t.Errorf("table lacks the absent image:\n%s", table)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		if err := l.reg.Stop(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := l.reg.Restart(context.Background()); err != nil {
				t.Errorf("restart registry: %v", err)
			}
		})
		out, code := check(t, l)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		for _, im := range out.Images {
			if !strings.HasPrefix(im.Image, l.reg.Addr()+"/check/") {
				continue
			}
			if im.Status != "unreachable" || !strings.Contains(im.Reason, "connection refused") {
				t.Errorf("%s: %s %q, want unreachable with connection refused", im.Image, im.Status, im.Reason)
			}
		}
	})
}

func allAvailable(out checkOutput) bool {
	for _, im := range out.Images {
		if im.Status != "available" {
			return false
		}
	}
	return true
}

// TestCheckWithoutRuntime: a CRI endpoint that does not answer is a setup
// error (exit 2) naming what was tried.
func TestCheckWithoutRuntime(t *testing.T) {
	l := need(t)
	sock := filepath.Join(t.TempDir(), "nothing.sock")
	_, stderr, code := runAgent(t, l, "check", "--cri-endpoint", "unix://"+sock)
	if code != 2 || !strings.Contains(stderr, sock) || !strings.Contains(stderr, "--cri-endpoint") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
}
