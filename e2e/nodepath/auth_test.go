package nodepath_test

import (
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/certs"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
	"github.com/pullwatch/pullwatch/e2e/harness/tokenserver"
)

// TestNodePathTLSHtpasswd: a TLS registry with htpasswd auth, trusted (or
// not) through the node's hosts.toml. The node has no pull credentials,
// so where TLS works the answer is unauthorized; where the node does not
// trust the certificate it is unreachable with the x509 error. containerd
// pulling with the same hosts.toml agrees, and with credentials it pulls
// exactly where TLS works.
func TestNodePathTLSHtpasswd(t *testing.T) {
	l := lab.Need(t)
	reg := lab.Registry(t, "tls-htpasswd", registry.Options{TLS: true, Htpasswd: map[string]string{"puller": "pull-secret-1"}})
	user, pass, _ := reg.Credentials()
	creds := &runtimeapi.AuthConfig{Username: user, Password: pass}
	host, url := reg.Addr(), reg.URL()

	// A CA that did not sign the registry's certificate.
	otherCA, _, err := certs.CA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCAFile := filepath.Join(t.TempDir(), "other-ca.crt")
	if err := os.WriteFile(otherCAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherCA.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	// Root-level keys configure the server entry itself. The empty [host]
	// table is needed by containerd before 1.7.2x, which otherwise rejects
	// the file ("invalid `host` tree", containerd#10027).
	withCA := fmt.Sprintf("server = %q\nca = %q\n\n[host]\n", url, reg.CAFile())
	node := l.FreshNode(t, containerd.Options{Hosts: map[string]string{host: withCA}})

	ref := reg.Ref("np/private", "v1")
	lab.Push(t, "np/private", "v1", registry.ImageOptions{}, reg)
	node.Pull(t, ref, creds) // the kubelet passes pull credentials with each PullImage

	asked := agentcheck.WantEndpoint{URL: url + "/v2", Role: "upstream", Status: "unauthorized", HTTP: 401}
	untrusted := agentcheck.WantEndpoint{URL: url + "/v2", Role: "upstream", Status: "unreachable", ReasonHas: "x509"}
	cases := []struct {
		name  string
		hosts string
		want  agentcheck.Want // status "": only the runtime's agreement is checked
	}{
		{
			name: "ca for the server, no credentials: unauthorized", hosts: withCA,
			want: agentcheck.Want{Status: "unauthorized", ReasonHas: []string{"401"}, Endpoints: []agentcheck.WantEndpoint{asked}},
		},
		{
			name:  "skip_verify for the server, no credentials: unauthorized",
			hosts: fmt.Sprintf("server = %q\nskip_verify = true\n\n[host]\n", url),
			want:  agentcheck.Want{Status: "unauthorized", ReasonHas: []string{"401"}, Endpoints: []agentcheck.WantEndpoint{asked}},
		},
		{
			// containerd lists the URL twice: the [host] entry (with the CA)
			// first, then the server entry (without it). Its resolver
			// reports the most relevant error, the 401 from the first: the
			// node needs credentials, not a CA.
			name:  "ca in a [host] section for the server's URL, no credentials: unauthorized",
			hosts: fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n", url, url, reg.CAFile()),
			want:  agentcheck.Want{Status: "unauthorized", ReasonHas: []string{"401"}, Endpoints: []agentcheck.WantEndpoint{asked, untrusted}},
		},
		{
			name:  "neither ca nor skip_verify: unreachable, x509",
			hosts: fmt.Sprintf("server = %q\n\n[host]\n", url),
			want: agentcheck.Want{Status: "unreachable", ReasonHas: []string{"x509"}, Endpoints: []agentcheck.WantEndpoint{
				{URL: url + "/v2", Role: "upstream", Status: "unreachable", ReasonHas: "certificate signed by unknown authority"},
			}},
		},
		{
			name:  "a ca that did not sign the certificate: unreachable, x509",
			hosts: fmt.Sprintf("server = %q\nca = %q\n\n[host]\n", url, otherCAFile),
			want:  agentcheck.Want{Status: "unreachable", ReasonHas: []string{"x509"}, Endpoints: []agentcheck.WantEndpoint{untrusted}},
		},
		{
			// Without any [host] table containerd 1.6 (and 1.7 before the
			// fix for containerd#10027) rejects the file and uses the
			// host's default endpoint, without the CA; containerd 2.x reads
			// it. Whatever the node runs, the agent must say what it gets.
			name:  "root-level ca without a [host] table: as the node's containerd reads it",
			hosts: fmt.Sprintf("server = %q\nca = %q\n", url, reg.CAFile()),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := node.Containerd.SetHostsTOML(host, c.hosts); err != nil {
				t.Fatal(err)
			}
			t.Logf("hosts.toml for %s:\n%s", host, c.hosts)
			run := node.Check(t)
			im := run.Expect(t, ref, c.want)
			node.ExpectRuntime(t, ref, nil, im.Status)
			// With the credentials the node lacks, the pull works exactly
			// when the agent's only complaint was the missing credentials.
			_ = node.ExpectPull(t, ref, creds, im.Status == "unauthorized" || im.Status == "available", "the agent said "+im.Status)
			if strings.Contains(run.Stdout+run.Stderr, pass) {
				t.Errorf("the registry password appears in the agent's output%s", run.Dump())
			}
		})
	}
}

// TestNodePathTokenAuth: docker-registry with auth.token and the test
// token server. Anonymous pull granted → available, with one token
// request for two tags of one repository (the token is cached per realm,
// service and scope); the token server refusing anonymous requests, or
// granting a token without access (what Docker Hub does for a private
// repository) → unauthorized. No hosts.toml: the shared lab's containerd.
func TestNodePathTokenAuth(t *testing.T) {
	l := lab.Need(t)
	ts, err := tokenserver.Start(t.TempDir(), tokenserver.Options{Users: map[string]string{"pusher": "push-secret-1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ts.Close)
	t.Logf("token server: realm %s, service %s", ts.Realm(), ts.Service())
	reg := lab.Registry(t, "token-auth", registry.Options{Token: ts.TokenAuth()})
	node := l.Node()

	repo := "np/token/app"
	push := registry.ImageOptions{Username: "pusher", Password: "push-secret-1"}
	v1, v2 := reg.Ref(repo, "v1"), reg.Ref(repo, "v2")
	lab.Push(t, repo, "v1", push, reg)
	lab.Push(t, repo, "v2", push, reg)
	node.Pull(t, v1, nil)
	node.Pull(t, v2, nil)
	t.Cleanup(func() { node.RemoveImages(t, v1, v2) })

	fromAgent := func(r tokenserver.Request) bool { return strings.HasPrefix(r.UserAgent, "pullwatch") }
	available := agentcheck.Want{Status: "available", Endpoints: []agentcheck.WantEndpoint{
		{URL: "://" + reg.Addr() + "/v2", Role: "upstream", Status: "available", HTTP: 200},
	}}
	cases := []struct {
		name      string
		anonymous tokenserver.Anonymous
		delay     time.Duration // the token server's
		args      []string
		want      agentcheck.Want
		// wantTokens is how many token requests the agent makes in one
		// check (-1: not checked).
		wantTokens int
	}{
		{
			name: "anonymous pull granted: available, one token for two tags", anonymous: tokenserver.AnonymousPull,
			args: []string{"--concurrency", "1"}, want: available, wantTokens: 1,
		},
		{
			// Both tags are probed at once; the second probe must wait for
			// the token the first is fetching rather than fetch its own.
			name: "concurrent probes of one repository share one token", anonymous: tokenserver.AnonymousPull,
			delay: 300 * time.Millisecond, want: available, wantTokens: 1,
		},
		{
			name: "token server refuses anonymous: unauthorized", anonymous: tokenserver.AnonymousRefuse,
			want: agentcheck.Want{Status: "unauthorized", ReasonHas: []string{ts.Realm(), "401"}, Endpoints: []agentcheck.WantEndpoint{
				{URL: "://" + reg.Addr() + "/v2", Role: "upstream", Status: "unauthorized", HTTP: 401},
			}},
			wantTokens: -1,
		},
		{
			name: "token without access: unauthorized", anonymous: tokenserver.AnonymousNoAccess,
			want: agentcheck.Want{Status: "unauthorized", Endpoints: []agentcheck.WantEndpoint{
				{URL: "://" + reg.Addr() + "/v2", Role: "upstream", Status: "unauthorized", HTTP: 401},
			}},
			wantTokens: -1,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts.SetAnonymous(c.anonymous)
			ts.SetDelay(c.delay)
			t.Cleanup(func() { ts.SetDelay(0) })
			before := len(ts.Requests())
			run := node.Check(t, c.args...)
			got := 0
			for _, r := range ts.Requests()[before:] {
				if fromAgent(r) {
					got++
					t.Logf("  token request from the agent: %s user=%q scopes=%v → %d, granted %v", r.Method, r.User, r.Scopes, r.Status, r.Granted)
				}
			}
			t.Logf("token server (anonymous=%s, delay %s) answered %d token requests from the agent (args %v)", c.anonymous, c.delay, got, c.args)
			for _, ref := range []string{v1, v2} {
				im := run.Expect(t, ref, c.want)
				node.ExpectRuntime(t, ref, nil, im.Status)
			}
			if c.wantTokens >= 0 && got != c.wantTokens {
				t.Errorf("the agent asked the token server %d times for %s (2 tags, one realm, service and scope), want %d%s", got, repo, c.wantTokens, run.Dump())
			}
		})
	}
}
