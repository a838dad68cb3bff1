package credentials_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

// TestCredentialsNodeKeyring: a TLS + htpasswd registry and the node's
// keyring (a config.json, given with --docker-config). The right
// credentials → available from node_keyring; wrong ones → unauthorized, as
// containerd pulling with them agrees; a corrupt config.json is named in
// the log and the image is probed anonymously (unauthorized). The password
// never appears in the agent's output, debug logs included.
func TestCredentialsNodeKeyring(t *testing.T) {
	l := lab.Need(t)
	cl := newCredLab(t, l, "cred-keyring")
	host := cl.reg.Addr()

	cases := []struct {
		name, key, user, pass string
		status, source        string
	}{
		{"right credentials under the host", host, cl.user, cl.pass, "available", "node_keyring"},
		{"right credentials under an https:// URL with /v2/", "https://" + host + "/v2/", cl.user, cl.pass, "available", "node_keyring"},
		{"right credentials for the repository path", host + "/cred", cl.user, cl.pass, "available", "node_keyring"},
		{"wrong password", host, cl.user, cl.pass + "-wrong", "unauthorized", "node_keyring"},
		{"credentials for another registry: anonymous", "other.example", cl.user, cl.pass, "unauthorized", "anonymous"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := cl.dockerConfig(t, c.key, c.user, c.pass)
			run := cl.node.Check(t, "--docker-config", cfg, "--log-level", "debug")
			cl.expectCredential(t, run, c.status, c.source)
			if c.pass != cl.pass {
				_ = cl.node.ExpectPull(t, cl.ref, cl.authWith(c.user, c.pass), false, "the keyring's credentials are wrong")
			}
		})
	}

	t.Run("directory with config.json", func(t *testing.T) {
		cfg := cl.dockerConfig(t, host, cl.user, cl.pass)
		run := cl.node.Check(t, "--docker-config", filepath.Dir(cfg))
		cl.expectCredential(t, run, "available", "node_keyring")
	})

	t.Run("corrupt config.json: named in the log, image probed anonymously", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "config.json")
		if err := os.WriteFile(cfg, []byte(`{"auths":{"`+host+`":{"auth":"`+cl.pass+`"`), 0o600); err != nil {
			t.Fatal(err)
		}
		run := cl.node.Check(t, "--docker-config", cfg, "--log-level", "debug")
		cl.expectCredential(t, run, "unauthorized", "anonymous")
		if !strings.Contains(run.Stderr, cfg) || !strings.Contains(run.Stderr, "fix or remove the file") {
			t.Errorf("the log does not name the corrupt file and the fix%s", run.Dump())
		}
	})
}
