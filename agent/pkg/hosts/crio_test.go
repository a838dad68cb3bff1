package hosts

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const digestRef = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestCRIOEndpoints(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "registries.conf"), `
[[registry]]
prefix = "quay.io"
location = "quay.io"
[[registry.mirror]]
location = "mirror.example/quay"
[[registry.mirror]]
location = "digest-mirror.example"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "evil.example"
location = "evil.example"
blocked = true
`)
	writeFile(t, filepath.Join(dir, "registries.conf.d", "50-internal.conf"), `
[[registry]]
prefix = "internal.example/team"
location = "registry.internal:5000/mirror/team"
insecure = true
`)
	c, err := NewCRIO(context.Background(), CRIOOptions{RegistriesConf: filepath.Join(dir, "registries.conf"), RegistriesConfDir: filepath.Join(dir, "registries.conf.d"), CertsDir: filepath.Join(dir, "certs.d")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		image string
		want  string
	}{
		{"quay.io/org/app:v1", "https://mirror.example/v2 quay/org/app mirror|https://quay.io/v2 org/app upstream"},
		{"quay.io/org/app" + digestRef, "https://mirror.example/v2 quay/org/app mirror|https://digest-mirror.example/v2 org/app mirror|https://quay.io/v2 org/app upstream"},
		{"internal.example/team/svc:1", "https://registry.internal:5000/v2 mirror/team/svc upstream"},
		{"ghcr.io/x/y:1", "https://ghcr.io/v2  upstream"},
		{"evil.example/x:1", "https://evil.example/v2  upstream skip"},
	}
	for _, tt := range tests {
		eps, err := c.Endpoints(context.Background(), mustRef(t, tt.image))
		if err != nil {
			t.Fatalf("%s: %v", tt.image, err)
		}
		var got []string
		for _, ep := range eps {
			s := ep.URL + " " + ep.Repository + " " + ep.Role.Word()
			if ep.Skip != "" {
				s += " skip"
			}
			got = append(got, s)
		}
		if strings.Join(got, "|") != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.image, strings.Join(got, "|"), tt.want)
		}
	}
}

func TestCRIOBadConfig(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "registries.conf")
	writeFile(t, p, "[[registry]\nprefix=\n")
	if _, err := NewCRIO(context.Background(), CRIOOptions{RegistriesConf: p, RegistriesConfDir: filepath.Join(dir, "none")}); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v", err)
	}
}

func FuzzCRIORegistriesConf(f *testing.F) {
	f.Add("[[registry]]\nprefix = \"a.example\"\nlocation = \"b.example/x\"\n[[registry.mirror]]\nlocation = \"m.example\"\npull-from-mirror = \"tag-only\"\n")
	f.Add("unqualified-search-registries = [\"docker.io\"]\n")
	f.Fuzz(func(t *testing.T, content string) {
		dir := t.TempDir()
		p := filepath.Join(dir, "registries.conf")
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := NewCRIO(context.Background(), CRIOOptions{RegistriesConf: p, RegistriesConfDir: filepath.Join(dir, "none")})
		if err != nil {
			return
		}
		_, _ = c.Endpoints(context.Background(), mustRef(t, "a.example/app:v1"))
	})
}
