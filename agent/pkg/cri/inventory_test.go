package cri

import (
	"context"
	"strings"
	"testing"
	"time"
)

const (
	appID   = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	toolsID = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	idleID  = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
	bareID  = "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
	mdA     = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	mdT     = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

func testInventory() *Inventory {
	return &Inventory{
		Images: []Image{
			{ID: appID, RepoTags: []string{"127.0.0.1:5000/demo/app:v1"}, RepoDigests: []string{"127.0.0.1:5000/demo/app@" + mdA}},
			{ID: toolsID, RepoTags: []string{"127.0.0.1:5000/demo/tools:1.0", "127.0.0.1:5000/demo/tools:latest"}, RepoDigests: []string{"127.0.0.1:5000/demo/tools@" + mdT}},
			{ID: idleID, RepoDigests: []string{"127.0.0.1:5000/demo/idle@" + mdA}},
			{ID: bareID}, // imported without a name: nothing to probe
		},
		Sandboxes: map[string]Sandbox{"sb1": {ID: "sb1", Name: "web", Namespace: "shop", UID: "u1"}},
		Containers: []Container{
			// kubelet style on containerd: image is the id, user-specified image set
			{ID: "c1", Name: "app", PodSandboxID: "sb1", Image: appID, ImageRef: appID, UserSpecifiedImage: "127.0.0.1:5000/demo/app:v1", State: "running",
				Labels: map[string]string{labelPodName: "web", labelPodNamespace: "shop", labelPodUID: "u1", labelContainerName: "app"}},
			// older kubelet: only the id, no user-specified image, no labels (sandbox metadata used)
			{ID: "c2", Name: "init", PodSandboxID: "sb1", Image: toolsID, ImageRef: toolsID, State: "exited"},
			// container whose image has been removed from the store
			{ID: "c3", Name: "ghost", PodSandboxID: "sb1", Image: "sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", State: "exited"},
		},
	}
}

func TestEntries(t *testing.T) {
	got := testInventory().Entries()
	type row struct{ ref, digest, uses, problem string }
	want := []row{
		{"127.0.0.1:5000/demo/app:v1", mdA, "shop/web/app/running", ""},
		{"127.0.0.1:5000/demo/idle@" + mdA, mdA, "", ""},
		{"127.0.0.1:5000/demo/tools:1.0", mdT, "shop/web/init/exited", ""},
		{"127.0.0.1:5000/demo/tools:latest", mdT, "shop/web/init/exited", ""},
		{"", "", "shop/web/ghost/exited", "not in the runtime's store"},
	}
	if len(got) != len(want) {
		for _, e := range got {
			t.Logf("entry %q problem=%q uses=%v", e.Ref, e.Problem, e.Uses)
		}
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		e := got[i]
		var uses []string
		for _, u := range e.Uses {
			uses = append(uses, u.Namespace+"/"+u.Pod+"/"+u.Container+"/"+u.State)
		}
		ref := ""
		if e.Problem == "" {
			ref = e.Ref.String()
		}
		g := row{ref, e.Digest, strings.Join(uses, ","), e.Problem}
		if g.ref != w.ref || g.digest != w.digest || g.uses != w.uses || !strings.Contains(g.problem, w.problem) || (w.problem == "") != (g.problem == "") {
			t.Errorf("entry %d = %+v, want %+v", i, g, w)
		}
		if e.InUse() != (w.uses != "") {
			t.Errorf("entry %d InUse = %v", i, e.InUse())
		}
	}
}

func TestDialErrorNamesEverySocket(t *testing.T) {
	dir := t.TempDir()
	eps := []string{"unix://" + dir + "/a.sock", dir + "/b.sock", "tcp://127.0.0.1:1"}
	_, err := Dial(context.Background(), eps, 500*time.Millisecond)
	if err == nil || !IsDialError(err) {
		t.Fatalf("Dial = %v, want DialError", err)
	}
	for _, ep := range eps {
		if !strings.Contains(err.Error(), ep) {
			t.Errorf("error does not name %s:\n%s", ep, err)
		}
	}
	if !strings.Contains(err.Error(), "--cri-endpoint") {
		t.Errorf("error does not say how to fix it:\n%s", err)
	}
}
