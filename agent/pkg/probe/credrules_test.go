package probe

import (
	"net/url"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
)

// TestCredentialsGoWhereTheRuntimeSendsThem: basic credentials never go
// over plain HTTP to another host than the registry's.
func TestCredentialsGoWhereTheRuntimeSendsThem(t *testing.T) {
	upstream := hosts.Endpoint{Role: hosts.RoleUpstream}
	mirror := hosts.Endpoint{Role: hosts.RoleMirror}
	for _, tc := range []struct {
		ref, to, base string
		ep            hosts.Endpoint
		send          bool
	}{
		{"registry.example/app:v1", "https://mirror.example/v2", "https://mirror.example/v2", mirror, true},
		{"registry.example/app:v1", "http://mirror.example/v2", "http://mirror.example/v2", mirror, false},
		{"registry.example:5000/app:v1", "http://registry.example:5000/v2", "http://registry.example:5000/v2", upstream, true},
		{"registry.example/app:v1", "http://auth.example/token", "http://registry.example/v2", upstream, false},
		{"registry.example/app:v1", "http://registry.example:8080/token", "http://registry.example/v2", upstream, true},
		{"docker.io/library/nginx:1", "http://registry-1.docker.io/token", "https://registry-1.docker.io/v2", upstream, true},
		{"127.0.0.1:5000/app:v1", "http://localhost:9000/token", "http://127.0.0.1:5000/v2", upstream, true},
		{"registry.example/app:v1", "http://server.example/v2", "http://server.example/v2", upstream, true}, // hosts.toml server
	} {
		to, _ := url.Parse(tc.to)
		base, _ := url.Parse(tc.base)
		why := withholdFrom(to, mustRef(t, tc.ref), tc.ep, base)
		if (why == "") != tc.send {
			t.Errorf("%s to %s (endpoint %s): withheld %q, want sent %v", tc.ref, tc.to, tc.base, why, tc.send)
		}
	}
}

// TestTokenRealmsNotOnTheNode: realms on the loopback network, link-local
// addresses or the node's own are refused unless the registry is there.
func TestTokenRealmsNotOnTheNode(t *testing.T) {
	p := New(Options{})
	for _, tc := range []struct {
		realm, registry string
		ok              bool
	}{
		{"https://auth.example/token", "https://registry.example/v2", true},
		{"http://127.0.0.1:8080/internal/token", "https://registry.example/v2", false},
		{"http://localhost/token", "https://registry.example/v2", false},
		{"http://169.254.169.254/latest/meta-data", "https://registry.example/v2", false},
		{"http://[fe80::1]/token", "https://registry.example/v2", false},
		{"http://127.0.0.1:8080/token", "http://127.0.0.1:5000/v2", true},
		{"ftp://auth.example/token", "https://registry.example/v2", false},
	} {
		reg, _ := url.Parse(tc.registry)
		_, err := p.checkRealm(tc.realm, reg)
		if (err == nil) != tc.ok {
			t.Errorf("realm %s for %s: %v, want ok %v", tc.realm, tc.registry, err, tc.ok)
		}
		if err != nil && strings.Contains(err.Error(), "user:") {
			t.Errorf("userinfo in %v", err)
		}
	}
}
