package dockerauth

import (
	"slices"
	"testing"
)

func TestKeyringKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://index.docker.io/v1/", "index.docker.io"},
		{"index.docker.io/v1/", "index.docker.io"},
		{"index.docker.io", "index.docker.io"},
		{"docker.io", "docker.io"},
		{"http://registry.example:5000", "registry.example:5000"},
		{"https://registry.example/v2/", "registry.example"},
		{"registry.example/v2/team", "registry.example/team"},
		{"quay.io/coreos", "quay.io/coreos"},
		{"quay.io/coreos/", "quay.io/coreos/"},
		{"*.example.com", "*.example.com"},
		{"127.0.0.1:5000", "127.0.0.1:5000"},
	}
	for _, tt := range tests {
		got, ok := keyringKey(tt.in)
		if !ok || got != tt.want {
			t.Errorf("keyringKey(%q) = %q, %v; want %q", tt.in, got, ok, tt.want)
		}
	}
	if _, ok := keyringKey("https://bad host/%zz"); ok {
		t.Error("a key that is not a URL was accepted")
	}
}

func TestMatchImage(t *testing.T) {
	tests := []struct {
		glob, image string
		want        bool
	}{
		{"registry.example", "registry.example/app", true},
		{"registry.example", "other.example/app", false},
		{"*.example.com", "a.example.com/app", true},
		{"*.example.com", "a.b.example.com/app", false}, // one glob per host part
		{"*.example.com", "example.com/app", false},
		{"*.*.example.com", "a.b.example.com/app", true},
		{"registry-*.example", "registry-eu.example/x", true},
		{"registry.example:5000", "registry.example:5000/app", true},
		{"registry.example:5000", "registry.example/app", false}, // port must match
		{"registry.example", "registry.example:5000/app", false},
		{"quay.io/coreos", "quay.io/coreos/etcd", true},
		{"quay.io/core", "quay.io/coreos/etcd", true}, // a string prefix, as in the kubelet
		{"quay.io/coreos", "quay.io/other/etcd", false},
		{"[bad", "x/y", false},
		{"127.0.0.1:5000", "127.0.0.1:5000/demo/app", true},
		{"docker.io", "docker.io/library/nginx", true},
		{"index.docker.io", "docker.io/library/nginx", false}, // only through the Docker Hub fallback
		{"registry-1.docker.io", "docker.io/library/nginx", false},
	}
	for _, tt := range tests {
		if got := MatchImage(tt.glob, tt.image); got != tt.want {
			t.Errorf("MatchImage(%q, %q) = %v, want %v", tt.glob, tt.image, got, tt.want)
		}
	}
}

func TestKeyringLookupOrder(t *testing.T) {
	kr := &Keyring{}
	kr.Add([]Entry{
		{Key: "quay.io", Credential: Credential{Username: "host", Password: "1"}},
		{Key: "https://quay.io/coreos", Credential: Credential{Username: "path", Password: "2"}},
		{Key: "quay.io/coreos/etcd", Credential: Credential{Username: "repo", Password: "3"}},
		{Key: "*.io", Credential: Credential{Username: "glob", Password: "4"}},
		{Key: "elsewhere.example", Credential: Credential{Username: "no", Password: "5"}},
	})
	kr.Add([]Entry{{Key: "quay.io", Credential: Credential{Username: "host-second-secret", Password: "6"}}})
	var got []string
	for _, up := range kr.Lookup("quay.io/coreos/etcd") {
		got = append(got, up.Username)
	}
	// Reverse-sorted keys: quay.io/coreos/etcd, quay.io/coreos, quay.io, *.io.
	want := []string{"repo", "path", "host", "host-second-secret", "glob"}
	if !slices.Equal(got, want) {
		t.Errorf("lookup order %v, want %v", got, want)
	}
}

func TestKeyringDockerHub(t *testing.T) {
	tests := []struct {
		key, image string
		want       bool
	}{
		{"https://index.docker.io/v1/", "docker.io/library/nginx", true},
		{"index.docker.io", "docker.io/library/nginx", true},
		{"https://index.docker.io/v1/", "docker.io/org/app", true},
		{"docker.io", "docker.io/library/nginx", true},
		{"https://index.docker.io/v1/", "ghcr.io/org/app", false},
		// The kubelet does not treat registry-1.docker.io as Docker Hub.
		{"registry-1.docker.io", "docker.io/library/nginx", false},
	}
	for _, tt := range tests {
		kr := &Keyring{}
		kr.Add([]Entry{{Key: tt.key, Credential: Credential{Username: "u", Password: "p"}}})
		if got := len(kr.Lookup(tt.image)) == 1; got != tt.want {
			t.Errorf("key %q, image %q: matched %v, want %v", tt.key, tt.image, got, tt.want)
		}
	}
	// The Docker Hub fallback is only used when nothing else matched.
	kr := &Keyring{}
	kr.Add([]Entry{{Key: "index.docker.io", Credential: Credential{Username: "hub", Password: "1"}}, {Key: "docker.io/library", Credential: Credential{Username: "lib", Password: "2"}}})
	if got := kr.Lookup("docker.io/library/nginx"); len(got) != 1 || got[0].Username != "lib" {
		t.Errorf("lookup = %v, want only the docker.io/library credential", got)
	}
}

func TestIsDefaultRegistryMatch(t *testing.T) {
	for image, want := range map[string]bool{
		"ubuntu":                  true,
		"library/ubuntu":          true,
		"docker.io/library/nginx": true,
		"index.docker.io/x/y":     true,
		"ghcr.io/x/y":             false,
		"localhost:5000/x":        false,
		"/x":                      false,
		"":                        false,
	} {
		if got := isDefaultRegistryMatch(image); got != want {
			t.Errorf("isDefaultRegistryMatch(%q) = %v, want %v", image, got, want)
		}
	}
}

// FuzzKeyring feeds arbitrary keys and images to the matcher: it must not
// panic, and every credential it returns must be one that was added.
func FuzzKeyring(f *testing.F) {
	f.Add("https://index.docker.io/v1/", "docker.io/library/nginx")
	f.Add("*.example.com:5000/team", "a.example.com:5000/team/app")
	f.Add("[::1]:5000", "[::1]:5000/x")
	f.Add("%zz", "a/b")
	f.Add("[[[", "[a.b/c")
	f.Fuzz(func(t *testing.T, key, image string) {
		kr := &Keyring{}
		kr.Add([]Entry{{Key: key, Credential: Credential{Username: "u", Password: "p"}}, {Key: "other.example", Credential: Credential{Username: "o", Password: "q"}}})
		for _, up := range kr.Lookup(image) {
			if up != (Credential{Username: "u", Password: "p"}) && up != (Credential{Username: "o", Password: "q"}) {
				t.Fatalf("lookup returned a credential never added: %v", up)
			}
		}
		_ = MatchImage(key, image)
	})
}
