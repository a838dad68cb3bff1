package kubenode

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/runtimes"
)

// TestContainerdConfigEveryRuntime: each containerd this machine has takes
// the node's config.toml as written for it — `containerd config dump`
// loads it without an unknown or ignored key, and the settings the box
// needs (sandbox image, restrict_oom_score_adj, CNI dirs, runc on cgroupfs,
// certs.d, NRI off on 2.x) are in effect.
func TestContainerdConfigEveryRuntime(t *testing.T) {
	all, missing := runtimes.Containerds()
	if len(all) == 0 {
		t.Skip("no containerd here: " + missing)
	}
	for _, rt := range all {
		t.Run(rt.Name, func(t *testing.T) {
			bin := rt.Binary
			if !filepath.IsAbs(bin) {
				p, err := exec.LookPath(bin)
				if err != nil {
					t.Skip(err)
				}
				bin = p
			}
			n := &Node{opts: Options{Runtime: rt, SandboxImage: "10.203.0.10:5000/box/pause:1"}}
			f := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(f, []byte(n.containerdConfig()), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "--config", f, "config", "dump").CombinedOutput()
			if err != nil {
				t.Fatalf("containerd config dump: %v\n%s", err, out)
			}
			dump := string(out)
			for _, bad := range []string{"unknown key", "Ignoring unknown", "level=error"} {
				if strings.Contains(dump, bad) {
					t.Errorf("%s on the node's config:\n%s", bad, dump)
				}
			}
			want := []string{"10.203.0.10:5000/box/pause:1", "restrict_oom_score_adj = true", "/usr/lib/cni",
				"/etc/cni/net.d", "SystemdCgroup = false", "/etc/containerd/certs.d", "overlayfs"}
			for _, w := range want {
				if !strings.Contains(dump, w) {
					t.Errorf("%q not in effect:\n%s", w, dump)
				}
			}
			if rt.Major >= 2 {
				i := strings.Index(dump, "[plugins.'io.containerd.nri.v1.nri']")
				if i < 0 || !strings.Contains(dump[i:min(len(dump), i+200)], "disable = true") {
					t.Errorf("NRI not disabled:\n%s", dump)
				}
			}
		})
	}
}

func TestPodNetnsMounts(t *testing.T) {
	mi := `22 1 0:21 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
812 22 0:4 net:[4026532771] /run/netns/cni-37c74818-0fa2-6bcf-7228-6b842baea393 rw shared:400 - nsfs nsfs rw
813 22 0:4 net:[4026532772] /var/run/netns/cni-aa rw - nsfs nsfs rw
814 22 0:4 net:[4026532773] /run/netns/pwc-abc123-node-1 rw - nsfs nsfs rw
815 22 0:4 mnt:[4026532774] /tmp/x/ns/mnt rw - nsfs nsfs rw
816 22 0:21 / /run/netns rw - tmpfs tmpfs rw`
	got := PodNetnsMounts(mi)
	want := []string{"/run/netns/cni-37c74818-0fa2-6bcf-7228-6b842baea393", "/run/netns/cni-aa"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("PodNetnsMounts = %q, want %q", got, want)
	}
}
