package harness_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/prometheus"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// requireReal skips the test unless it runs as root with the real binaries
// installed; with PULLWATCH_REQUIRE_REAL=1 it fails instead.
func requireReal(t *testing.T, bins ...string) {
	t.Helper()
	proc.RequireReal(t, bins...)
}

// expectNoProcesses registers a cleanup (run after every later-registered
// one) asserting that no process mentions dir on its command line and that
// the given pids are gone.
func expectNoProcesses(t *testing.T, dir string, pids ...*int) {
	t.Cleanup(func() {
		if left := proc.Find(dir); len(left) > 0 {
			var desc []string
			for _, pid := range left {
				cl, _ := proc.Cmdline(pid)
				desc = append(desc, fmt.Sprintf("%d %s", pid, cl))
			}
			t.Errorf("processes left behind:\n%s", strings.Join(desc, "\n"))
		}
		if _, err := exec.LookPath("pgrep"); err == nil {
			out, err := exec.Command("pgrep", "-af", dir).Output()
			var ee *exec.ExitError
			if err == nil || !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Errorf("pgrep -af %s: %v\n%s", dir, err, out)
			}
		}
		for _, p := range pids {
			if *p != 0 && proc.Alive(*p) {
				cl, _ := proc.Cmdline(*p)
				t.Errorf("pid %d still alive: %s", *p, cl)
			}
		}
	})
}

// realTestDir is the test's directory for real parts: its logs kept when
// the test fails (keepLogs), and no process left mentioning it, nor any of
// pids alive, when the test ends (expectNoProcesses).
func realTestDir(t *testing.T, pids ...*int) string {
	dir := t.TempDir()
	keepLogs(t, dir)
	expectNoProcesses(t, dir, pids...)
	return dir
}

// keepLogs copies dir's *.log files to $PULLWATCH_TEST_OUT/<test>/ when the
// test fails (CI keeps that directory). Register it after t.TempDir.
func keepLogs(t *testing.T, dir string) {
	out := os.Getenv("PULLWATCH_TEST_OUT")
	if out == "" {
		return
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		dst := filepath.Join(out, strings.ReplaceAll(t.Name(), "/", "_"))
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".log") {
				return nil
			}
			rel, _ := filepath.Rel(dir, p)
			b, err := os.ReadFile(p)
			if err == nil && os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o755) == nil {
				_ = os.WriteFile(filepath.Join(dst, rel), b, 0o644)
			}
			return nil
		})
		t.Logf("logs copied to %s", dst)
	})
}

func TestContainerdRegistryPod(t *testing.T) {
	requireReal(t, containerd.Binary, "runc", "containerd-shim-runc-v2", registry.Binary, "go")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var regPid, tlsPid, cdPid, appPid int
	dir := realTestDir(t, &regPid, &tlsPid, &cdPid, &appPid)
	t0 := time.Now()
	step := func(what string) { t.Logf("%6.2fs %s", time.Since(t0).Seconds(), what) }

	// A plain-HTTP registry holding an app image and the sleeper.
	reg, err := registry.Start(ctx, dir+"/registry", registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	regPid = reg.Pid()
	t.Cleanup(func() {
		if err := reg.Stop(); err != nil {
			t.Error(err)
		}
	})
	step("registry up")
	appDigest, err := registry.PushImage(ctx, reg, "e2e/app", "v1", registry.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v2Digest, err := registry.PushImage(ctx, reg, "e2e/app", "v2", registry.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v2Digest == appDigest {
		t.Fatalf("v1 and v2 share digest %s", appDigest)
	}
	if _, err := registry.PushSleeper(ctx, reg, "e2e/sleeper", "v1"); err != nil {
		t.Fatal(err)
	}

	step("images pushed")
	// A TLS registry with basic auth, reached through hosts.toml (CA) and
	// per-pull credentials, as a kubelet would.
	tlsReg, err := registry.Start(ctx, dir+"/tlsregistry", registry.Options{TLS: true, Htpasswd: map[string]string{"puller": "pw-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	tlsPid = tlsReg.Pid()
	t.Cleanup(func() {
		if err := tlsReg.Stop(); err != nil {
			t.Error(err)
		}
	})
	privDigest, err := registry.PushImage(ctx, tlsReg, "e2e/private", "v1", registry.ImageOptions{OCI: true})
	if err != nil {
		t.Fatal(err)
	}

	step("TLS registry up, image pushed")
	start := time.Now()
	cd, err := containerd.Start(ctx, dir+"/containerd", containerd.Options{
		SandboxImage: reg.Ref("e2e/sleeper", "v1"),
		Hosts:        map[string]string{tlsReg.Addr(): tlsReg.HostsTOML()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd up in %v at %s", time.Since(start).Round(time.Millisecond), cd.Endpoint())
	cdPid = cd.Pid()
	t.Cleanup(func() {
		if err := cd.Stop(); err != nil {
			t.Error(err)
		}
	})

	for _, ref := range []string{reg.Ref("e2e/app", "v1"), reg.Ref("e2e/sleeper", "v1")} {
		if _, err := cd.PullImage(ctx, ref, nil); err != nil {
			t.Fatal(err)
		}
	}
	step("pulled over HTTP")
	privRef := tlsReg.Ref("e2e/private", "v1")
	if _, err := cd.PullImage(ctx, privRef, nil); err == nil {
		t.Fatalf("pull of %s without credentials succeeded", privRef)
	}
	if _, err := cd.PullImage(ctx, privRef, &runtimeapi.AuthConfig{Username: "puller", Password: "pw-secret"}); err != nil {
		t.Fatalf("pull with credentials: %v\n%s", err, proc.LogTail(cd.LogFile(), 20))
	}
	images, err := cd.Images().ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	wantDigests := map[string]bool{
		reg.Addr() + "/e2e/app@" + appDigest:         false,
		tlsReg.Addr() + "/e2e/private@" + privDigest: false,
	}
	for _, img := range images.Images {
		for _, d := range img.RepoDigests {
			if _, ok := wantDigests[d]; ok {
				wantDigests[d] = true
			}
		}
	}
	for d, seen := range wantDigests {
		if !seen {
			t.Errorf("ListImages has no repo digest %s", d)
		}
	}

	step("pulled over TLS with auth")
	// A host-network pod with an init container and a regular one.
	sleeperRef := reg.Ref("e2e/sleeper", "v1")
	sandboxID, err := cd.RunPod(ctx, containerd.PodSpec{
		Namespace: "e2e", Name: "demo", UID: "11111111-2222-3333-4444-555555555555",
		Containers: []containerd.ContainerSpec{
			{Name: "setup", Image: sleeperRef, Init: true, Command: []string{"/sleep", "0"}},
			{Name: "app", Image: sleeperRef},
		},
	})
	if err != nil {
		t.Fatalf("RunPod: %v\n%s", err, proc.LogTail(cd.LogFile(), 30))
	}
	step("pod running")
	sleeperID, err := cd.ImageID(ctx, sleeperRef)
	if err != nil || sleeperID == "" {
		t.Fatalf("ImageID(%s) = %q, %v", sleeperRef, sleeperID, err)
	}
	list, err := cd.Runtime().ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: sandboxID}})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*runtimeapi.Container{}
	for _, c := range list.Containers {
		byName[c.Labels[containerd.LabelContainerName]] = c
		for k, want := range map[string]string{containerd.LabelPodName: "demo", containerd.LabelPodNamespace: "e2e", containerd.LabelPodUID: "11111111-2222-3333-4444-555555555555"} {
			if c.Labels[k] != want {
				t.Errorf("container %s label %s = %q, want %q", c.Metadata.Name, k, c.Labels[k], want)
			}
		}
		if c.Image.GetImage() != sleeperID {
			t.Errorf("container %s image %q, want image id %s", c.Metadata.Name, c.Image.GetImage(), sleeperID)
		}
	}
	if len(list.Containers) != 2 || byName["setup"] == nil || byName["app"] == nil {
		t.Fatalf("ListContainers: %v", list.Containers)
	}
	if s := byName["setup"].State; s != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("init container state %v", s)
	}
	if s := byName["app"].State; s != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("app container state %v", s)
	}
	if appPid, err = cd.ContainerPid(ctx, byName["app"].Id); err != nil || !proc.Alive(appPid) {
		t.Errorf("app container pid %d (alive %v), %v", appPid, proc.Alive(appPid), err)
	}
	st, err := cd.Runtime().ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: byName["app"].Id})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("app ContainerStatus: image=%q imageRef=%q imageId=%q userSpecifiedImage=%q", st.Status.Image.GetImage(), st.Status.ImageRef, st.Status.ImageId, st.Status.Image.GetUserSpecifiedImage())

	step("containers checked")
	// Registry down: /v2/ refuses; back up: same content on the same address.
	if err := reg.Stop(); err != nil {
		t.Fatal(err)
	}
	if proc.Alive(regPid) {
		t.Errorf("registry pid %d alive after Stop", regPid)
	}
	if resp, err := reg.Do(ctx, http.MethodGet, "/v2/", nil); err == nil {
		resp.Body.Close()
		t.Fatalf("GET /v2/ on a stopped registry: %s", resp.Status)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("GET /v2/ on a stopped registry: %v, want connection refused", err)
	}
	if err := reg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	regPid = reg.Pid()
	code, digest, err := registry.ManifestStatus(ctx, reg, "e2e/app", "v1")
	if err != nil || code != http.StatusOK || digest != appDigest {
		t.Fatalf("HEAD e2e/app:v1 after restart = %d %s %v, want 200 %s", code, digest, err, appDigest)
	}

	step("registry stopped and restarted")
	// Delete the manifest: HEAD by digest and by tag now 404.
	if err := registry.DeleteManifest(ctx, reg, "e2e/app", appDigest); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{appDigest, "v1"} {
		if code, _, err := registry.ManifestStatus(ctx, reg, "e2e/app", ref); err != nil || code != http.StatusNotFound {
			t.Errorf("HEAD e2e/app %s after delete = %d %v, want 404", ref, code, err)
		}
	}
	if code, _, _ := registry.ManifestStatus(ctx, reg, "e2e/app", "v2"); code != http.StatusOK {
		t.Errorf("HEAD e2e/app:v2 after deleting v1 = %d, want 200", code)
	}

	step("manifest deleted")
	if err := cd.RemovePod(ctx, sandboxID); err != nil {
		t.Fatal(err)
	}
	list, err = cd.Runtime().ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil || len(list.Containers) != 0 {
		t.Errorf("after RemovePod: %v containers, %v", len(list.GetContainers()), err)
	}
	if err := proc.Poll(ctx, 5*time.Second, 50*time.Millisecond, func() error {
		if proc.Alive(appPid) {
			return fmt.Errorf("container pid %d alive", appPid)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	step("pod removed")
	// A second pod stays running: Stop must clean it (and its shim) up.
	if _, err := cd.RunPod(ctx, containerd.PodSpec{Namespace: "e2e", Name: "left-running",
		Containers: []containerd.ContainerSpec{{Name: "app", Image: sleeperRef}}}); err != nil {
		t.Fatal(err)
	}
}

func TestRegistryTLSBasicAuth(t *testing.T) {
	requireReal(t, registry.Binary)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var pid int
	dir := realTestDir(t, &pid)

	reg, err := registry.Start(ctx, dir, registry.Options{TLS: true, Htpasswd: map[string]string{"alice": "wonder", "bob": "builder"}})
	if err != nil {
		t.Fatal(err)
	}
	pid = reg.Pid()
	t.Cleanup(func() {
		if err := reg.Stop(); err != nil {
			t.Error(err)
		}
	})
	if !strings.HasPrefix(reg.URL(), "https://127.0.0.1:") || reg.CAFile() == "" {
		t.Fatalf("URL %s CA %q", reg.URL(), reg.CAFile())
	}
	get := func(user, pass string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, reg.URL()+"/v2/", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := reg.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("401 without a Basic challenge: %q", resp.Header.Get("WWW-Authenticate"))
		}
		return resp.StatusCode
	}
	if c := get("", ""); c != http.StatusUnauthorized {
		t.Errorf("anonymous /v2/ = %d, want 401", c)
	}
	if c := get("alice", "wrong"); c != http.StatusUnauthorized {
		t.Errorf("bad password /v2/ = %d, want 401", c)
	}
	if c := get("bob", "builder"); c != http.StatusOK {
		t.Errorf("bob /v2/ = %d, want 200", c)
	}
	// The system trust store does not know our CA.
	if resp, err := http.Get(reg.URL() + "/v2/"); err == nil {
		resp.Body.Close()
		t.Errorf("default client trusted the test CA")
	}
	// Pushing over TLS with credentials (go-containerregistry sees a loopback
	// address and would use plain HTTP without the harness transport).
	d, err := registry.PushImage(ctx, reg, "private/app", "v1", registry.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registry.PushImage(ctx, reg, "private/app", "v2", registry.ImageOptions{Username: "alice", Password: "nope"}); err == nil {
		t.Error("push with a wrong password succeeded")
	}
	if code, got, err := registry.ManifestStatus(ctx, reg, "private/app", "v1"); err != nil || code != http.StatusOK || got != d {
		t.Errorf("HEAD private/app:v1 = %d %s %v, want 200 %s", code, got, err, d)
	}
}

func TestPrometheusScrape(t *testing.T) {
	requireReal(t, prometheus.Binary)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var pid int
	dir := realTestDir(t, &pid)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, "# HELP pw_e2e_image_available Test metric.\n# TYPE pw_e2e_image_available gauge\n")
		fmt.Fprint(w, "pw_e2e_image_available{node=\"node-a\",image=\"127.0.0.1:5000/demo/app:v1\"} 1\n")
		fmt.Fprint(w, "pw_e2e_image_available{node=\"node-b\",image=\"127.0.0.1:5000/demo/gone:v1\"} 0\n")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	p, err := prometheus.Start(ctx, dir, []string{l.Addr().String()}, prometheus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pid = p.Pid()
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
	})
	got, err := p.WaitForQuery(ctx, `pw_e2e_image_available`, func(s []prometheus.Sample) bool { return len(s) == 2 }, 30*time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, proc.LogTail(p.LogFile(), 20))
	}
	vals := map[string]float64{}
	for _, s := range got {
		if s.Labels["job"] != "pullwatch" || s.Labels["instance"] != l.Addr().String() || s.Labels["__name__"] != "pw_e2e_image_available" {
			t.Errorf("labels %v", s.Labels)
		}
		vals[s.Labels["node"]] = s.Value
	}
	if vals["node-a"] != 1 || vals["node-b"] != 0 {
		t.Errorf("values %v", vals)
	}
	if s, err := p.Query(ctx, `sum(pw_e2e_image_available == 0)`); err != nil || len(s) != 1 || s[0].Value != 0 {
		t.Errorf("sum query: %v %v", s, err)
	}
	if s, err := p.Query(ctx, `scalar(count(pw_e2e_image_available))`); err != nil || len(s) != 1 || s[0].Value != 2 {
		t.Errorf("scalar query: %v %v", s, err)
	}
	if _, err := p.Query(ctx, `sum(`); err == nil {
		t.Error("bad PromQL gave no error")
	}
}

// TestContainerdStopAfterCrash: when containerd dies with pods running, Stop
// still kills the shims and container processes and unmounts everything.
func TestContainerdStopAfterCrash(t *testing.T) {
	requireReal(t, containerd.Binary, "runc", "containerd-shim-runc-v2", registry.Binary, "go")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var regPid, cdPid, appPid int
	dir := realTestDir(t, &regPid, &cdPid, &appPid)

	reg, err := registry.Start(ctx, dir+"/registry", registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	regPid = reg.Pid()
	t.Cleanup(func() { _ = reg.Stop() })
	if _, err := registry.PushSleeper(ctx, reg, "e2e/sleeper", "v1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("e2e/sleeper", "v1")
	cd, err := containerd.Start(ctx, dir+"/containerd", containerd.Options{SandboxImage: ref})
	if err != nil {
		t.Fatal(err)
	}
	cdPid = cd.Pid()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cd.Stop()
		}
	})
	if _, err := cd.PullImage(ctx, ref, nil); err != nil {
		t.Fatal(err)
	}
	sb, err := cd.RunPod(ctx, containerd.PodSpec{Namespace: "e2e", Name: "orphan", Containers: []containerd.ContainerSpec{{Name: "app", Image: ref}}})
	if err != nil {
		t.Fatal(err)
	}
	list, err := cd.Runtime().ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: sb}})
	if err != nil || len(list.Containers) != 1 {
		t.Fatalf("ListContainers: %v %v", list, err)
	}
	if appPid, err = cd.ContainerPid(ctx, list.Containers[0].Id); err != nil {
		t.Fatal(err)
	}
	if shims := proc.Find("-address " + cd.Socket()); len(shims) == 0 {
		t.Fatal("no shim found for the running pod")
	}
	if err := syscall.Kill(cdPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := proc.Poll(ctx, 5*time.Second, 20*time.Millisecond, func() error {
		if proc.Alive(cdPid) {
			return errors.New("containerd still alive")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !proc.Alive(appPid) {
		t.Fatal("container process died with containerd; the test proves nothing")
	}
	stopped = true
	if err := cd.Stop(); err != nil {
		t.Fatal(err)
	}
	if proc.Alive(appPid) {
		t.Errorf("container process %d survived Stop", appPid)
	}
	addrFiles, _ := filepath.Glob(filepath.Join(cd.State(), "io.containerd.runtime.v2.task", "*", "*", "address"))
	if len(addrFiles) == 0 {
		t.Error("no shim address file found; cannot check shim sockets")
	}
	for _, f := range addrFiles {
		b, _ := os.ReadFile(f)
		if sock := strings.TrimPrefix(strings.TrimSpace(string(b)), "unix://"); sock != "" {
			if _, err := os.Stat(sock); err == nil {
				t.Errorf("shim socket %s left behind", sock)
			}
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), dir) {
		t.Errorf("mounts left under %s", dir)
	}
}
