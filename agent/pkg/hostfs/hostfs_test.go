package hostfs

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestPath(t *testing.T) {
	dir := t.TempDir()
	root := New(dir + "/")
	// The node's /etc/ssl/certs/bundle.crt is an absolute symlink, as on
	// RHEL: on the node it points at /etc/pki/bundle.pem, so under the
	// root it must too, not at the container's /etc/pki.
	for _, d := range []string{"etc/ssl/certs", "etc/pki"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/pki/bundle.pem", filepath.Join(dir, "etc/ssl/certs/bundle.crt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../etc/pki", filepath.Join(dir, "etc/ssl/pki")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ in, want string }{
		{"/etc/containerd/config.toml", dir + "/etc/containerd/config.toml"},
		{"etc/resolv.conf", dir + "/etc/resolv.conf"},
		{"/../../etc/passwd", dir + "/etc/passwd"},
		{"/etc/ssl/certs/bundle.crt", dir + "/etc/pki/bundle.pem"},
		{"/etc/ssl/pki/x.pem", dir + "/etc/pki/x.pem"},
		{"", ""},
	} {
		if got := root.Path(tt.in); got != tt.want {
			t.Errorf("Path(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := (Root{}).Path("relative/config.json"); got != "relative/config.json" {
		t.Errorf("without a root, Path changed the path: %q", got)
	}
	if got := New("").Dir(); got != "" {
		t.Errorf("New(\"\").Dir() = %q", got)
	}
}

func TestGlobAndNodePath(t *testing.T) {
	dir := t.TempDir()
	root := New(dir)
	for _, f := range []string{"etc/containerd/conf.d/b.toml", "etc/containerd/conf.d/a.toml", "etc/containerd/conf.d/c.txt"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := root.Glob("/etc/containerd/conf.d/*.toml")
	want := []string{"/etc/containerd/conf.d/a.toml", "/etc/containerd/conf.d/b.toml"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Glob = %q, %v; want %q", got, err, want)
	}
	if got := root.NodePath("/elsewhere/x"); got != "/elsewhere/x" {
		t.Errorf("NodePath outside the root = %q", got)
	}
	if got := root.NodePath(dir); got != "/" {
		t.Errorf("NodePath(root) = %q, want /", got)
	}
}
