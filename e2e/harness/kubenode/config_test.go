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
