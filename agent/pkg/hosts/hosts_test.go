package hosts

import (
	"context"
	"testing"
)

func TestDefaults(t *testing.T) {
	tests := []struct{ host, url string }{
		{"docker.io", "https://registry-1.docker.io"},
		{"ghcr.io", "https://ghcr.io"},
		{"127.0.0.1:5000", "http://127.0.0.1:5000"},
		{"localhost:5000", "http://localhost:5000"},
		{"localhost", "http://localhost"},
		{"[::1]:5000", "http://[::1]:5000"},
		{"10.0.0.1:5000", "https://10.0.0.1:5000"},
	}
	for _, tt := range tests {
		eps, err := Defaults{}.Endpoints(context.Background(), tt.host)
		if err != nil || len(eps) != 1 || eps[0].URL != tt.url || eps[0].Role != RoleUpstream || eps[0].Host != tt.host {
			t.Errorf("Endpoints(%q) = %+v, %v; want %s", tt.host, eps, err, tt.url)
		}
	}
}
