package hosts

import (
	"context"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
)

func mustRef(t testing.TB, s string) imageref.Ref {
	t.Helper()
	r, err := imageref.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDefaults(t *testing.T) {
	tests := []struct{ image, host, url string }{
		{"nginx", "docker.io", "https://registry-1.docker.io/v2"},
		{"ghcr.io/a/b:1", "ghcr.io", "https://ghcr.io/v2"},
		{"127.0.0.1:5000/a:1", "127.0.0.1:5000", "http://127.0.0.1:5000/v2"},
		{"localhost:5000/a:1", "localhost:5000", "http://localhost:5000/v2"},
		{"[::1]:5000/a:1", "[::1]:5000", "http://[::1]:5000/v2"},
		{"10.0.0.1:5000/a:1", "10.0.0.1:5000", "https://10.0.0.1:5000/v2"},
	}
	for _, tt := range tests {
		eps, err := Defaults{}.Endpoints(context.Background(), mustRef(t, tt.image))
		if err != nil || len(eps) != 1 || eps[0].URL != tt.url || eps[0].Role != RoleUpstream || eps[0].Host != tt.host {
			t.Errorf("Endpoints(%q) = %+v, %v; want %s", tt.image, eps, err, tt.url)
		}
	}
}
