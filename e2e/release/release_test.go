// Package release_test runs `make release` against a real docker-registry on
// 127.0.0.1 and checks that the install files it writes pin the digests the
// registry serves. Not in make test (a two-arch image build takes minutes):
// `make release-test` runs it (PULLWATCH_RELEASE_TEST=1, root).
package release_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

const version = "v0.0.0-releasetest"

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// TestRelease: make release REGISTRY=127.0.0.1:PORT/pullwatch pushes both
// images as amd64+arm64 manifest lists, and images.txt, the kustomize
// overlay, its rendering and the Helm values all name each image by the
// digest a HEAD of its tag returns.
func TestRelease(t *testing.T) {
	if os.Getenv("PULLWATCH_RELEASE_TEST") != "1" {
		t.Skip("a two-arch image build (minutes): make release-test runs it")
	}
	if os.Geteuid() != 0 {
		proc.SkipOrFail(t, "make release builds with buildah as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	reg, err := registry.Start(ctx, t.TempDir(), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Stop()

	out := t.TempDir()
	prefix := reg.Addr() + "/pullwatch"
	cmd := exec.CommandContext(ctx, "make", "-C", repoRoot(t), "release", "REGISTRY="+prefix, "VERSION="+version, "RELEASE_OUT="+out)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("make release: %v\n%s", err, log.String())
	}
	t.Logf("make release took %s", time.Since(start).Round(time.Second))

	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	imagesTxt, kust, values := read("images.txt"), read("kustomization.yaml"), read("values.yaml")
	rendered := read("pullwatch.yaml")
	var vals struct {
		Agent, Aggregator struct {
			Image struct{ Registry, Repository, Tag, Digest string }
		}
	}
	if err := yaml.Unmarshal([]byte(values), &vals); err != nil {
		t.Fatalf("values.yaml: %v", err)
	}

	for _, name := range []string{"pullwatch-agent", "pullwatch-aggregator"} {
		status, served, err := registry.ManifestStatus(ctx, reg, "pullwatch/"+name, version)
		if err != nil || status != http.StatusOK || !strings.HasPrefix(served, "sha256:") {
			t.Fatalf("HEAD %s:%s: %d %q %v", name, version, status, served, err)
		}
		t.Logf("%s:%s is served as %s", name, version, served)
		pinned := prefix + "/" + name + "@" + served
		if !strings.Contains(imagesTxt, prefix+"/"+name+":"+version+"@"+served) {
			t.Errorf("images.txt does not name %s:%s@%s:\n%s", name, version, served, imagesTxt)
		}
		if !strings.Contains(kust, "digest: "+served) {
			t.Errorf("kustomization.yaml does not pin %s:\n%s", served, kust)
		}
		if !strings.Contains(rendered, "image: "+pinned+"\n") {
			t.Errorf("pullwatch.yaml does not run %s", pinned)
		}
		img := vals.Agent.Image
		if name == "pullwatch-aggregator" {
			img = vals.Aggregator.Image
		}
		if img.Registry+"/"+img.Repository != prefix+"/"+name || img.Digest != served {
			t.Errorf("values.yaml %s image %+v, want %s", name, img, pinned)
		}

		// The tag is a manifest list of linux/amd64 and linux/arm64.
		h := http.Header{}
		h.Add("Accept", "application/vnd.oci.image.index.v1+json")
		h.Add("Accept", "application/vnd.docker.distribution.manifest.list.v2+json")
		resp, err := reg.Do(ctx, http.MethodGet, "/v2/pullwatch/"+name+"/manifests/"+served, h)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var index struct {
			Manifests []struct {
				Platform struct{ OS, Architecture string }
			}
		}
		if err := json.Unmarshal(body, &index); err != nil {
			t.Fatalf("%s: index: %v\n%s", name, err, body)
		}
		var platforms []string
		for _, m := range index.Manifests {
			platforms = append(platforms, m.Platform.OS+"/"+m.Platform.Architecture)
		}
		slices.Sort(platforms)
		if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
			t.Errorf("%s:%s holds %v, want linux/amd64 and linux/arm64", name, version, platforms)
		}
	}

	// The chart with these values runs the same pinned images.
	if helm := filepath.Join(os.Getenv("PULLWATCH_HELM_BIN"), "helm"); os.Getenv("PULLWATCH_HELM_BIN") != "" {
		c := exec.CommandContext(ctx, helm, "template", "pullwatch", filepath.Join(repoRoot(t), "deploy/helm/pullwatch"), "-n", "pullwatch", "-f", filepath.Join(out, "values.yaml"))
		c.Env = append(os.Environ(), "HOME="+t.TempDir())
		got, err := c.Output()
		if err != nil {
			t.Fatalf("helm template -f values.yaml: %v", err)
		}
		for _, line := range strings.Split(rendered, "\n") {
			if strings.Contains(line, "image: ") && !strings.Contains(string(got), strings.TrimSpace(line)+"\n") {
				t.Errorf("helm template with values.yaml lacks %q", strings.TrimSpace(line))
			}
		}
	}
}
