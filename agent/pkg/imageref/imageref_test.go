package imageref

import (
	"strings"
	"testing"
)

const dgst = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParse(t *testing.T) {
	tests := []struct {
		in, want, registry, repo, tag, digest, manifestRef string
	}{
		{"nginx", "docker.io/library/nginx:latest", "docker.io", "library/nginx", "latest", "", "latest"},
		{"nginx:1.27", "docker.io/library/nginx:1.27", "docker.io", "library/nginx", "1.27", "", "1.27"},
		{"ghcr.io/org/app:v1", "ghcr.io/org/app:v1", "ghcr.io", "org/app", "v1", "", "v1"},
		{"127.0.0.1:5000/demo/app:v1", "127.0.0.1:5000/demo/app:v1", "127.0.0.1:5000", "demo/app", "v1", "", "v1"},
		{"localhost:5000/app@" + dgst, "localhost:5000/app@" + dgst, "localhost:5000", "app", "", dgst, dgst},
		{"quay.io/a/b:t@" + dgst, "quay.io/a/b:t@" + dgst, "quay.io", "a/b", "t", dgst, dgst},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := Parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			got := []string{r.String(), r.Registry(), r.Repository(), r.Tag(), r.Digest(), r.ManifestReference()}
			want := []string{tt.want, tt.registry, tt.repo, tt.tag, tt.digest, tt.manifestRef}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("field %d = %q, want %q", i, got[i], want[i])
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"", dgst, strings.TrimPrefix(dgst, "sha256:"), "Nginx", "a b", "x:5000/app:bad tag"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		} else if in != "" && !strings.Contains(err.Error(), in) {
			t.Errorf("error %q does not name the input", err)
		}
	}
}

func TestDigestFor(t *testing.T) {
	r, _ := Parse("127.0.0.1:5000/demo/app:v1")
	other := "127.0.0.1:5000/demo/other@sha256:" + strings.Repeat("1", 64)
	mine := "127.0.0.1:5000/demo/app@" + dgst
	if got := r.DigestFor([]string{other, "garbage", mine}); got != dgst {
		t.Errorf("DigestFor = %q", got)
	}
	if got := r.DigestFor([]string{other}); got != "" {
		t.Errorf("DigestFor other repo = %q", got)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"nginx", "127.0.0.1:5000/demo/app:v1", "a/b@" + dgst, dgst, "[::1]:5000/x:y", "x//y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			return
		}
		// A normalized reference must parse again to itself.
		again, err := Parse(r.String())
		if err != nil {
			t.Fatalf("normalized %q does not parse: %v", r.String(), err)
		}
		if again.String() != r.String() {
			t.Fatalf("normalization not stable: %q -> %q", r.String(), again.String())
		}
		if r.ManifestReference() == "" {
			t.Fatalf("%q has no manifest reference", s)
		}
	})
}

func TestAPIHost(t *testing.T) {
	for _, tt := range []struct {
		host, api string
		hub       bool
	}{
		{"docker.io", "registry-1.docker.io", true},
		{"index.docker.io", "registry-1.docker.io", true},
		{"registry-1.docker.io", "registry-1.docker.io", false},
		{"ghcr.io", "ghcr.io", false},
		{"127.0.0.1:5000", "127.0.0.1:5000", false},
	} {
		if api, hub := APIHost(tt.host); api != tt.api || hub != tt.hub {
			t.Errorf("APIHost(%q) = %q, %v; want %q, %v", tt.host, api, hub, tt.api, tt.hub)
		}
	}
}
