package nodepath_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// TestNodePathTagDrift: a tag pushed again with new content after the
// node pulled it. The image stays available (drift is informational) and
// the report carries both digests: the node's and the registry's.
func TestNodePathTagDrift(t *testing.T) {
	l := lab.Need(t)
	node := l.Node()
	reg := lab.Registry(t, "drift", registry.Options{})

	moved, steady := reg.Ref("np/drift", "v1"), reg.Ref("np/steady", "v1")
	old := lab.Push(t, "np/drift", "v1", registry.ImageOptions{Files: map[string][]byte{"etc/release": []byte("1\n")}}, reg)
	steadyDigest := lab.Push(t, "np/steady", "v1", registry.ImageOptions{}, reg)
	node.Pull(t, moved, nil)
	node.Pull(t, steady, nil)
	t.Cleanup(func() { node.RemoveImages(t, moved, steady) })
	repushed := lab.Push(t, "np/drift", "v1", registry.ImageOptions{Files: map[string][]byte{"etc/release": []byte("2\n")}}, reg)
	if repushed == old {
		t.Fatal("the second push has the first one's digest")
	}

	run := node.Check(t)
	im := run.Expect(t, moved, agentcheck.Want{Status: "available", Drifted: true, Endpoints: []agentcheck.WantEndpoint{
		{URL: "://" + reg.Addr() + "/v2", Role: "upstream", Status: "available", HTTP: 200},
	}})
	if im.Digest != old || im.RegistryDigest != repushed {
		t.Errorf("%s: digest %s, registry_digest %s; want the node's %s and the registry's %s%s", moved, im.Digest, im.RegistryDigest, old, repushed, run.Dump())
	}
	im = run.Expect(t, steady, agentcheck.Want{Status: "available"})
	if im.Digest != steadyDigest || im.RegistryDigest != "" {
		t.Errorf("%s: digest %s, registry_digest %q; want %s and none%s", steady, im.Digest, im.RegistryDigest, steadyDigest, run.Dump())
	}
}

// TestNodePathPlatformMissing: multi-platform indexes. The node pulled a
// tag whose index had its platform; the tag is then pushed again as an
// index without it (only other architectures): the next pull would fail,
// so the agent says platform_missing (with drifted and both digests).
// Controls: the tag moved to another index that still has the node's
// platform (available, drifted), and an index left alone (available).
func TestNodePathPlatformMissing(t *testing.T) {
	l := lab.Need(t)
	node := l.Node()
	reg := lab.Registry(t, "multiarch", registry.Options{})

	native := "linux/" + runtime.GOARCH
	var foreign []string
	for _, arch := range []string{"s390x", "ppc64le", "riscv64"} {
		if arch != runtime.GOARCH && len(foreign) < 2 {
			foreign = append(foreign, "linux/"+arch)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pushIndex := func(repo string, plats []string, release string) string {
		t.Helper()
		d, err := registry.PushIndex(ctx, reg, repo, "v1", plats, registry.ImageOptions{Files: map[string][]byte{"etc/release": []byte(release)}})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pushed %s as an index of %s (%s)", reg.Ref(repo, "v1"), strings.Join(plats, ", "), d)
		return d
	}

	cases := []struct {
		name       string
		repo       string
		repushWith []string // nil: not pushed again
		want       agentcheck.Want
	}{
		{
			name: "tag moved to an index without the node's platform", repo: "np/multiarch/gone",
			repushWith: foreign,
			want:       agentcheck.Want{Status: "platform_missing", Drifted: true, ReasonHas: []string{runtime.GOARCH, foreign[0]}},
		},
		{
			name: "tag moved to an index that still has the node's platform", repo: "np/multiarch/moved",
			repushWith: []string{native, foreign[1]},
			want:       agentcheck.Want{Status: "available", Drifted: true},
		},
		{
			name: "index unchanged", repo: "np/multiarch/steady",
			want: agentcheck.Want{Status: "available"},
		},
	}
	// Set every case up first, then one check sees them all.
	pulled, now := map[string]string{}, map[string]string{}
	var refs []string
	for _, c := range cases {
		ref := reg.Ref(c.repo, "v1")
		refs = append(refs, ref)
		pulled[ref] = pushIndex(c.repo, []string{native, foreign[0]}, "1\n")
		node.Pull(t, ref, nil)
		now[ref] = pulled[ref]
		if c.repushWith != nil {
			now[ref] = pushIndex(c.repo, c.repushWith, "2\n")
		}
	}
	t.Cleanup(func() { node.RemoveImages(t, refs...) })

	run := node.Check(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ref := reg.Ref(c.repo, "v1")
			im := run.Expect(t, ref, c.want)
			wantRegistryDigest := ""
			if c.want.Drifted {
				wantRegistryDigest = now[ref]
			}
			if im.Digest != pulled[ref] || im.RegistryDigest != wantRegistryDigest {
				t.Errorf("digest %s, registry_digest %q; want the node's index %s and %q%s", im.Digest, im.RegistryDigest, pulled[ref], wantRegistryDigest, run.Dump())
			}
		})
	}
}
