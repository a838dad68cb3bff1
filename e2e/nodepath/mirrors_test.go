package nodepath_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
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
	l := lab.Need(t)
	up := lab.Registry(t, "upstream", registry.Options{})
	mirror := lab.Registry(t, "mirror", registry.Options{})
	// A second upstream whose mirror wants credentials the node lacks.
	up2 := lab.Registry(t, "upstream-2", registry.Options{})
	authMirror := lab.Registry(t, "mirror-with-auth", registry.Options{Htpasswd: map[string]string{"mirror-user": "mirror-secret-1"}})
	node := l.FreshNode(t, containerd.Options{Hosts: map[string]string{
		up.Addr():  mirrorHostsTOML(up, mirror, `["pull", "resolve"]`),
		up2.Addr(): mirrorHostsTOML(up2, authMirror, `["pull", "resolve"]`),
	}})

	both := up.Ref("np/mirrored", "v1")
	upOnly := up.Ref("np/upstream-only", "v1") // the mirror never got it
	behindAuth := up2.Ref("np/behind-auth", "v1")
	lab.Push(t, "np/mirrored", "v1", registry.ImageOptions{}, up, mirror)
	lab.Push(t, "np/upstream-only", "v1", registry.ImageOptions{}, up)
	lab.Push(t, "np/behind-auth", "v1", registry.ImageOptions{}, up2, authMirror)
	node.Pull(t, both, nil)
	node.Pull(t, upOnly, nil)
	node.Pull(t, behindAuth, nil)

	mirrorURL, upURL := mirror.URL()+"/v2", up.URL()+"/v2"
	authMirrorURL, up2URL := authMirror.URL()+"/v2", up2.URL()+"/v2"
	cases := []struct {
		name  string
		image string
		down  []*registry.Registry
		want  agentcheck.Want
	}{
		{
			name: "both up: the mirror answers", image: both,
			want: agentcheck.Want{Status: "available", ReasonHas: []string{mirrorURL}, Endpoints: []agentcheck.WantEndpoint{
				{URL: mirrorURL, Role: "mirror", Status: "available", HTTP: 200},
				{URL: upURL, Role: "upstream", Status: "available", HTTP: 200},
			}},
		},
		{
			name: "mirror lacks the image: upstream answers, degraded", image: upOnly,
			want: agentcheck.Want{Status: "available", Degraded: true, ReasonHas: []string{upURL, mirrorURL}, Endpoints: []agentcheck.WantEndpoint{
				{URL: mirrorURL, Role: "mirror", Status: "absent", HTTP: 404},
				{URL: upURL, Role: "upstream", Status: "available", HTTP: 200},
			}},
		},
		{
			name: "mirror down: available, degraded", image: both, down: []*registry.Registry{mirror},
			want: agentcheck.Want{Status: "available", Degraded: true, ReasonHas: []string{upURL, mirrorURL, "connection refused"}, Endpoints: []agentcheck.WantEndpoint{
				{URL: mirrorURL, Role: "mirror", Status: "unreachable", ReasonHas: "connection refused"},
				{URL: upURL, Role: "upstream", Status: "available", HTTP: 200},
			}},
		},
		{
			// Degraded too: one failure more (the mirror) and pulls fail.
			name: "upstream down: available via the mirror, degraded", image: both, down: []*registry.Registry{up},
			want: agentcheck.Want{Status: "available", Degraded: true, ReasonHas: []string{mirrorURL, upURL}, Endpoints: []agentcheck.WantEndpoint{
				{URL: mirrorURL, Role: "mirror", Status: "available", HTTP: 200},
				{URL: upURL, Role: "upstream", Status: "unreachable", ReasonHas: "connection refused"},
			}},
		},
		{
			name: "mirror wants credentials the node lacks: upstream answers, degraded", image: behindAuth,
			want: agentcheck.Want{Status: "available", Degraded: true, ReasonHas: []string{up2URL, authMirrorURL}, Endpoints: []agentcheck.WantEndpoint{
				{URL: authMirrorURL, Role: "mirror", Status: "unauthorized", HTTP: 401},
				{URL: up2URL, Role: "upstream", Status: "available", HTTP: 200},
			}},
		},
		{
			// The air-gapped node: only the mirror is meant to be reachable.
			// containerd reports the mirror's 401 (the most relevant error,
			// not the last one), so does the agent: the fix is credentials.
			name: "mirror wants credentials the node lacks, upstream down: unauthorized", image: behindAuth, down: []*registry.Registry{up2},
			want: agentcheck.Want{Status: "unauthorized", ReasonHas: []string{"401"}, Endpoints: []agentcheck.WantEndpoint{
				{URL: authMirrorURL, Role: "mirror", Status: "unauthorized", HTTP: 401},
				{URL: up2URL, Role: "upstream", Status: "unreachable", ReasonHas: "connection refused"},
			}},
		},
		{
			name: "both down: unreachable", image: both, down: []*registry.Registry{mirror, up},
			want: agentcheck.Want{Status: "unreachable", ReasonHas: []string{"connection refused"}, Endpoints: []agentcheck.WantEndpoint{
				{URL: mirrorURL, Role: "mirror", Status: "unreachable", ReasonHas: "connection refused"},
				{URL: upURL, Role: "upstream", Status: "unreachable", ReasonHas: "connection refused"},
			}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lab.Stopped(t, c.down...)
			run := node.Check(t)
			im := run.Expect(t, c.image, c.want)
			node.ExpectRuntime(t, c.image, nil, im.Status)
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
		run := node.Check(t, "--containerd-config", bare, "--registry-config-path", node.Containerd.CertsDir())
		run.Expect(t, both, agentcheck.Want{Status: "available", Endpoints: []agentcheck.WantEndpoint{
			{URL: mirrorURL, Role: "mirror", Status: "available"},
			{URL: upURL, Role: "upstream", Status: "available"},
		}})
		run = node.Check(t, "--containerd-config", bare, "--registry-config-path", t.TempDir())
		run.Expect(t, both, agentcheck.Want{Status: "available", Endpoints: []agentcheck.WantEndpoint{
			{URL: "://" + up.Addr() + "/v2", Role: "upstream", Status: "available"},
		}})
	})
}

// TestNodePathPullOnlyMirror: a mirror with capabilities = ["pull"] (no
// resolve) is not asked for a tag, so the agent reports it skipped and
// its outage does not degrade a tag; an image the node references by
// digest needs only pull, so the mirror is asked for it.
func TestNodePathPullOnlyMirror(t *testing.T) {
	l := lab.Need(t)
	up := lab.Registry(t, "upstream", registry.Options{})
	mirror := lab.Registry(t, "pull-only-mirror", registry.Options{})
	node := l.FreshNode(t, containerd.Options{Hosts: map[string]string{up.Addr(): mirrorHostsTOML(up, mirror, `["pull"]`)}})

	byTag := up.Ref("np/by-tag", "v1")
	lab.Push(t, "np/by-tag", "v1", registry.ImageOptions{}, up, mirror)
	d := lab.Push(t, "np/by-digest", "v1", registry.ImageOptions{}, up, mirror)
	byDigest := up.Ref("np/by-digest", d)
	node.Pull(t, byTag, nil)
	node.Pull(t, byDigest, nil)

	mirrorURL, upURL := mirror.URL()+"/v2", up.URL()+"/v2"
	cases := []struct {
		name               string
		down               []*registry.Registry
		wantTag, wantDigst agentcheck.Want
	}{
		{
			name: "mirror up",
			wantTag: agentcheck.Want{Status: "available", ReasonHas: []string{upURL}, Endpoints: []agentcheck.WantEndpoint{
				{URL: mirrorURL, Role: "mirror", Skipped: true, ReasonHas: "resolve"},
				{URL: upURL, Role: "upstream", Status: "available", HTTP: 200},
			}},
			wantDigst: agentcheck.Want{Status: "available", ReasonHas: []string{mirrorURL}, Endpoints: []agentcheck.WantEndpoint{
				{URL: mirrorURL, Role: "mirror", Status: "available", HTTP: 200},
				{URL: upURL, Role: "upstream", Status: "available", HTTP: 200},
			}},
		},
		{
			name: "mirror down", down: []*registry.Registry{mirror},
			wantTag: agentcheck.Want{Status: "available", Endpoints: []agentcheck.WantEndpoint{
				{URL: mirrorURL, Role: "mirror", Skipped: true},
				{URL: upURL, Role: "upstream", Status: "available"},
			}},
			wantDigst: agentcheck.Want{Status: "available", Degraded: true, Endpoints: []agentcheck.WantEndpoint{
				{URL: mirrorURL, Role: "mirror", Status: "unreachable", ReasonHas: "connection refused"},
				{URL: upURL, Role: "upstream", Status: "available"},
			}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lab.Stopped(t, c.down...)
			run := node.Check(t)
			tag := run.Expect(t, byTag, c.wantTag)
			digest := run.Expect(t, byDigest, c.wantDigst)
			node.ExpectRuntime(t, byTag, nil, tag.Status)
			node.ExpectRuntime(t, byDigest, nil, digest.Status)
		})
	}
}

// TestNodePathMalformedHostsTOML: a hosts.toml that is not TOML. containerd
// logs it and falls back to the host's default endpoint; the agent keeps
// checking (this host at its default endpoint, other hosts as usual) and
// warns on stderr naming the file.
func TestNodePathMalformedHostsTOML(t *testing.T) {
	l := lab.Need(t)
	broken := lab.Registry(t, "broken-hosts", registry.Options{})
	fine := lab.Registry(t, "fine", registry.Options{})
	bad := fmt.Sprintf("server = %q\n[host.%q\n  capabilities = [\"pull\", \"resolve\"\n", broken.URL(), broken.URL())
	node := l.FreshNode(t, containerd.Options{Hosts: map[string]string{broken.Addr(): bad}})
	file := filepath.Join(node.Containerd.CertsDir(), broken.Addr(), "hosts.toml")

	a, b := broken.Ref("np/app", "v1"), fine.Ref("np/app", "v1")
	lab.Push(t, "np/app", "v1", registry.ImageOptions{}, broken)
	lab.Push(t, "np/app", "v1", registry.ImageOptions{}, fine)
	// containerd itself pulls through the malformed file (its default endpoint).
	node.Pull(t, a, nil)
	node.Pull(t, b, nil)

	run := node.Check(t)
	run.Expect(t, a, agentcheck.Want{Status: "available", Endpoints: []agentcheck.WantEndpoint{
		{URL: "://" + broken.Addr() + "/v2", Role: "upstream", Status: "available", HTTP: 200},
	}})
	run.Expect(t, b, agentcheck.Want{Status: "available", Endpoints: []agentcheck.WantEndpoint{
		{URL: "://" + fine.Addr() + "/v2", Role: "upstream", Status: "available", HTTP: 200},
	}})
	var warning string
	for _, line := range strings.Split(run.Stderr, "\n") {
		if strings.Contains(line, file) && strings.Contains(line, "level=WARN") {
			warning = line
		}
	}
	if warning == "" {
		t.Errorf("no warning naming %s on stderr%s", file, run.Dump())
	} else {
		t.Logf("agent warned: %s", warning)
	}
	if run.Code != 0 {
		t.Errorf("exit %d, want 0%s", run.Code, run.Dump())
	}

	// With --log-format json every stderr line is a JSON object, also the
	// ones about this file (log shippers parse them).
	t.Run("json log format", func(t *testing.T) {
		run := node.Check(t, "--log-format", "json")
		lines := 0
		for _, line := range strings.Split(strings.TrimSpace(run.Stderr), "\n") {
			lines++
			var obj map[string]any
			if err := json.Unmarshal([]byte(line), &obj); err != nil {
				t.Errorf("stderr line is not JSON: %s", line)
			}
		}
		t.Logf("%d stderr lines checked", lines)
		if !strings.Contains(run.Stderr, file) {
			t.Errorf("no log line names %s%s", file, run.Dump())
		}
	})
}
