package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// mirrorHostsTOML is containerd's hosts.toml for upstream with one mirror
// in front of it: the mirror first, the server last.
func mirrorHostsTOML(upstream, mirror *registry.Registry, capabilities string) string {
	return fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = %s\n", upstream.URL(), mirror.URL(), capabilities)
}

// TestNodePathMirrors: a real containerd whose config_path has a
// hosts.toml putting a mirror (a second docker-registry with the same
// image under the same name) in front of the upstream. The agent reads
// the config.toml, probes both in containerd's order, and its verdict is
// what containerd itself gets when it pulls.
func TestNodePathMirrors(t *testing.T) {
	l := need(t)
	up := npRegistry(t, "upstream", registry.Options{})
	mirror := npRegistry(t, "mirror", registry.Options{})
	// A second upstream whose mirror wants credentials the node lacks.
	up2 := npRegistry(t, "upstream-2", registry.Options{})
	authMirror := npRegistry(t, "mirror-with-auth", registry.Options{Htpasswd: map[string]string{"mirror-user": "mirror-secret-1"}})
	node := npFreshNode(t, l, map[string]string{
		up.Addr():  mirrorHostsTOML(up, mirror, `["pull", "resolve"]`),
		up2.Addr(): mirrorHostsTOML(up2, authMirror, `["pull", "resolve"]`),
	})

	both := up.Ref("np/mirrored", "v1")
	upOnly := up.Ref("np/upstream-only", "v1") // the mirror never got it
	behindAuth := up2.Ref("np/behind-auth", "v1")
	npPush(t, "np/mirrored", "v1", registry.ImageOptions{}, up, mirror)
	npPush(t, "np/upstream-only", "v1", registry.ImageOptions{}, up)
	npPush(t, "np/behind-auth", "v1", registry.ImageOptions{}, up2, authMirror)
	node.pull(t, both, nil)
	node.pull(t, upOnly, nil)
	node.pull(t, behindAuth, nil)

	mirrorURL, upURL := mirror.URL()+"/v2", up.URL()+"/v2"
	authMirrorURL, up2URL := authMirror.URL()+"/v2", up2.URL()+"/v2"
	cases := []struct {
		name  string
		image string
		down  []*registry.Registry
		want  wantImage
	}{
		{
			name: "both up: the mirror answers", image: both,
			want: wantImage{status: "available", reasonHas: []string{mirrorURL}, endpoints: []wantEndpoint{
				{url: mirrorURL, role: "mirror", status: "available", http: 200},
				{url: upURL, role: "upstream", status: "available", http: 200},
			}},
		},
		{
			name: "mirror lacks the image: upstream answers, degraded", image: upOnly,
			want: wantImage{status: "available", degraded: true, reasonHas: []string{upURL, mirrorURL}, endpoints: []wantEndpoint{
				{url: mirrorURL, role: "mirror", status: "absent", http: 404},
				{url: upURL, role: "upstream", status: "available", http: 200},
			}},
		},
		{
			name: "mirror down: available, degraded", image: both, down: []*registry.Registry{mirror},
			want: wantImage{status: "available", degraded: true, reasonHas: []string{upURL, mirrorURL, "connection refused"}, endpoints: []wantEndpoint{
				{url: mirrorURL, role: "mirror", status: "unreachable", reasonHas: "connection refused"},
				{url: upURL, role: "upstream", status: "available", http: 200},
			}},
		},
		{
			// Degraded too: one failure more (the mirror) and pulls fail.
			name: "upstream down: available via the mirror, degraded", image: both, down: []*registry.Registry{up},
			want: wantImage{status: "available", degraded: true, reasonHas: []string{mirrorURL, upURL}, endpoints: []wantEndpoint{
				{url: mirrorURL, role: "mirror", status: "available", http: 200},
				{url: upURL, role: "upstream", status: "unreachable", reasonHas: "connection refused"},
			}},
		},
		{
			name: "mirror wants credentials the node lacks: upstream answers, degraded", image: behindAuth,
			want: wantImage{status: "available", degraded: true, reasonHas: []string{up2URL, authMirrorURL}, endpoints: []wantEndpoint{
				{url: authMirrorURL, role: "mirror", status: "unauthorized", http: 401},
				{url: up2URL, role: "upstream", status: "available", http: 200},
			}},
		},
		{
			// The air-gapped node: only the mirror is meant to be reachable.
			// containerd reports the mirror's 401 (the most relevant error,
			// not the last one), so does the agent: the fix is credentials.
			name: "mirror wants credentials the node lacks, upstream down: unauthorized", image: behindAuth, down: []*registry.Registry{up2},
			want: wantImage{status: "unauthorized", reasonHas: []string{"401"}, endpoints: []wantEndpoint{
				{url: authMirrorURL, role: "mirror", status: "unauthorized", http: 401},
				{url: up2URL, role: "upstream", status: "unreachable", reasonHas: "connection refused"},
			}},
		},
		{
			name: "both down: unreachable", image: both, down: []*registry.Registry{mirror, up},
			want: wantImage{status: "unreachable", reasonHas: []string{"connection refused"}, endpoints: []wantEndpoint{
				{url: mirrorURL, role: "mirror", status: "unreachable", reasonHas: "connection refused"},
				{url: upURL, role: "upstream", status: "unreachable", reasonHas: "connection refused"},
			}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			npStopped(t, c.down...)
			run := node.check(t)
			im := run.expect(t, c.image, c.want)
			node.expectRuntime(t, c.image, nil, im.Status)
		})
	}

	// The agent finds the hosts.toml through config.toml's config_path; an
	// explicit --registry-config-path does the same with a config.toml
	// that has none, and without either it sees no mirror.
	t.Run("config_path sources", func(t *testing.T) {
		bare := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(bare, []byte("version = 2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		run := node.check(t, "--containerd-config", bare, "--registry-config-path", node.c.CertsDir())
		run.expect(t, both, wantImage{status: "available", endpoints: []wantEndpoint{
			{url: mirrorURL, role: "mirror", status: "available"},
			{url: upURL, role: "upstream", status: "available"},
		}})
		run = node.check(t, "--containerd-config", bare, "--registry-config-path", t.TempDir())
		run.expect(t, both, wantImage{status: "available", endpoints: []wantEndpoint{
			{url: "://" + up.Addr() + "/v2", role: "upstream", status: "available"},
		}})
	})
}

// TestNodePathPullOnlyMirror: a mirror with capabilities = ["pull"] (no
// resolve) is not asked for a tag, so the agent reports it skipped and
// its outage does not degrade a tag; an image the node references by
// digest needs only pull, so the mirror is asked for it.
func TestNodePathPullOnlyMirror(t *testing.T) {
	l := need(t)
	up := npRegistry(t, "upstream", registry.Options{})
	mirror := npRegistry(t, "pull-only-mirror", registry.Options{})
	node := npFreshNode(t, l, map[string]string{up.Addr(): mirrorHostsTOML(up, mirror, `["pull"]`)})

	byTag := up.Ref("np/by-tag", "v1")
	npPush(t, "np/by-tag", "v1", registry.ImageOptions{}, up, mirror)
	d := npPush(t, "np/by-digest", "v1", registry.ImageOptions{}, up, mirror)
	byDigest := up.Ref("np/by-digest", d)
	node.pull(t, byTag, nil)
	node.pull(t, byDigest, nil)

	mirrorURL, upURL := mirror.URL()+"/v2", up.URL()+"/v2"
	cases := []struct {
		name               string
		down               []*registry.Registry
		wantTag, wantDigst wantImage
	}{
		{
			name: "mirror up",
			wantTag: wantImage{status: "available", reasonHas: []string{upURL}, endpoints: []wantEndpoint{
				{url: mirrorURL, role: "mirror", skipped: true, reasonHas: "resolve"},
				{url: upURL, role: "upstream", status: "available", http: 200},
			}},
			wantDigst: wantImage{status: "available", reasonHas: []string{mirrorURL}, endpoints: []wantEndpoint{
				{url: mirrorURL, role: "mirror", status: "available", http: 200},
				{url: upURL, role: "upstream", status: "available", http: 200},
			}},
		},
		{
			name: "mirror down", down: []*registry.Registry{mirror},
			wantTag: wantImage{status: "available", endpoints: []wantEndpoint{
				{url: mirrorURL, role: "mirror", skipped: true},
				{url: upURL, role: "upstream", status: "available"},
			}},
			wantDigst: wantImage{status: "available", degraded: true, endpoints: []wantEndpoint{
				{url: mirrorURL, role: "mirror", status: "unreachable", reasonHas: "connection refused"},
				{url: upURL, role: "upstream", status: "available"},
			}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			npStopped(t, c.down...)
			run := node.check(t)
			tag := run.expect(t, byTag, c.wantTag)
			digest := run.expect(t, byDigest, c.wantDigst)
			node.expectRuntime(t, byTag, nil, tag.Status)
			node.expectRuntime(t, byDigest, nil, digest.Status)
		})
	}
}

// TestNodePathMalformedHostsTOML: a hosts.toml that is not TOML. containerd
// logs it and falls back to the host's default endpoint; the agent keeps
// checking (this host at its default endpoint, other hosts as usual) and
// warns on stderr naming the file.
func TestNodePathMalformedHostsTOML(t *testing.T) {
	l := need(t)
	broken := npRegistry(t, "broken-hosts", registry.Options{})
	fine := npRegistry(t, "fine", registry.Options{})
	bad := fmt.Sprintf("server = %q\n[host.%q\n  capabilities = [\"pull\", \"resolve\"\n", broken.URL(), broken.URL())
	node := npFreshNode(t, l, map[string]string{broken.Addr(): bad})
	file := filepath.Join(node.c.CertsDir(), broken.Addr(), "hosts.toml")

	a, b := broken.Ref("np/app", "v1"), fine.Ref("np/app", "v1")
	npPush(t, "np/app", "v1", registry.ImageOptions{}, broken)
	npPush(t, "np/app", "v1", registry.ImageOptions{}, fine)
	// containerd itself pulls through the malformed file (its default endpoint).
	node.pull(t, a, nil)
	node.pull(t, b, nil)

	run := node.check(t)
	run.expect(t, a, wantImage{status: "available", endpoints: []wantEndpoint{
		{url: "://" + broken.Addr() + "/v2", role: "upstream", status: "available", http: 200},
	}})
	run.expect(t, b, wantImage{status: "available", endpoints: []wantEndpoint{
		{url: "://" + fine.Addr() + "/v2", role: "upstream", status: "available", http: 200},
	}})
	var warning string
	for _, line := range strings.Split(run.stderr, "\n") {
		if strings.Contains(line, file) && strings.Contains(line, "level=WARN") {
			warning = line
		}
	}
	if warning == "" {
		t.Errorf("no warning naming %s on stderr%s", file, run.dump())
	} else {
		t.Logf("agent warned: %s", warning)
	}
	if run.code != 0 {
		t.Errorf("exit %d, want 0%s", run.code, run.dump())
	}

	// With --log-format json every stderr line is a JSON object, also the
	// ones about this file (log shippers parse them).
	t.Run("json log format", func(t *testing.T) {
		run := node.check(t, "--log-format", "json")
		lines := 0
		for _, line := range strings.Split(strings.TrimSpace(run.stderr), "\n") {
			lines++
			var obj map[string]any
			if err := json.Unmarshal([]byte(line), &obj); err != nil {
				t.Errorf("stderr line is not JSON: %s", line)
			}
		}
		t.Logf("%d stderr lines checked", lines)
		if !strings.Contains(run.stderr, file) {
			t.Errorf("no log line names %s%s", file, run.dump())
		}
	})
}
