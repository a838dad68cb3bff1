package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// TestUpDown runs the real pwlab binary: up leaves containerd and the
// registry running after pwlab exits, a second up says so, down removes
// everything.
func TestUpDown(t *testing.T) {
	proc.RequireReal(t, containerd.Binary, "runc", "containerd-shim-runc-v2", registry.Binary, "go")
	bin, tmp, run := buildPwlab(t)
	dir := filepath.Join(tmp, "lab")
	t.Cleanup(func() {
		_ = exec.Command(bin, "down", "--dir", dir).Run()
		if left := proc.Find(dir); len(left) > 0 {
			t.Errorf("processes left: %v", left)
		}
	})

	out := run("up", "--dir", dir)
	env := map[string]string{}
	b, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		env[k] = v
	}
	if !strings.HasPrefix(env["PULLWATCH_CRI_ENDPOINT"], "unix:///") || !strings.HasPrefix(env["PULLWATCH_REGISTRY"], "127.0.0.1:") {
		t.Fatalf("env %v\n%s", env, out)
	}
	if !strings.Contains(out, "PULLWATCH_CRI_ENDPOINT=") {
		t.Errorf("up did not print the env:\n%s", out)
	}
	if out := run("up", "--dir", dir); !strings.Contains(out, "already up") {
		t.Errorf("second up:\n%s", out)
	}

	// What the lab holds, seen through CRI after pwlab exited.
	cd, err := containerd.Attach(filepath.Join(dir, "containerd"))
	if err != nil {
		t.Fatal(err)
	}
	defer cd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	imgs, err := cd.Images().ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	tags := map[string]bool{}
	for _, im := range imgs.Images {
		for _, tag := range im.RepoTags {
			tags[strings.TrimPrefix(tag, env["PULLWATCH_REGISTRY"]+"/")] = true
		}
	}
	for _, want := range []string{"demo/app:v1", "demo/app:v2", "demo/tools:1.0", "demo/sleeper:v1", "demo/gone:v1"} {
		if !tags[want] {
			t.Errorf("image %s not on the node (tags %v)", want, tags)
		}
	}
	cs, err := cd.Runtime().ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]runtimeapi.ContainerState{}
	for _, c := range cs.Containers {
		if c.Labels[containerd.LabelPodNamespace] == "default" && c.Labels[containerd.LabelPodName] == "demo-app" {
			states[c.Labels[containerd.LabelContainerName]] = c.State
		}
	}
	if states["tools"] != runtimeapi.ContainerState_CONTAINER_EXITED || states["app"] != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("demo-app containers: %v", states)
	}
	reg, err := registry.Attach(filepath.Join(dir, "registry"))
	if err != nil {
		t.Fatal(err)
	}
	if code, _, err := registry.ManifestStatus(ctx, reg, "demo/gone", "v1"); err != nil || code != 404 {
		t.Errorf("demo/gone:v1 in the registry: %d %v, want 404", code, err)
	}
	if code, _, err := registry.ManifestStatus(ctx, reg, "demo/app", "v1"); err != nil || code != 200 {
		t.Errorf("demo/app:v1 in the registry: %d %v, want 200", code, err)
	}
	cdPid, regPid := cd.Pid(), reg.Pid()
	if cdPid == 0 || regPid == 0 {
		t.Fatalf("pids: containerd %d registry %d", cdPid, regPid)
	}

	if out := run("down", "--dir", dir); !strings.Contains(out, "down") {
		t.Errorf("down:\n%s", out)
	}
	for _, pid := range []int{cdPid, regPid} {
		if proc.Alive(pid) {
			t.Errorf("pid %d alive after down", pid)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("lab dir still there after down: %v", err)
	}
	if out := run("down", "--dir", dir); !strings.Contains(out, "nothing to stop") {
		t.Errorf("second down:\n%s", out)
	}
}

// buildPwlab builds pwlab into the test's temp dir; it returns the binary,
// the dir, and run, which runs pwlab with args and fails the test when it
// fails.
func buildPwlab(t *testing.T) (bin, tmp string, run func(args ...string) string) {
	t.Helper()
	tmp = t.TempDir()
	bin = filepath.Join(tmp, "pwlab")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	run = func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("pwlab %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	return bin, tmp, run
}
