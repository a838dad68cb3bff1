package credentials_test

// Helpers for the TestCredentials* tests: a TLS + htpasswd registry the
// node trusts through hosts.toml, a containerd that has pulled (with the
// right credentials, as the kubelet would hand them) an image from it, and
// readers for what the agent says about pull credentials.

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// credLab is a private registry and a node that runs an image from it.
type credLab struct {
	reg        *registry.Registry
	node       *lab.Node
	user, pass string
	ref        string
}

// newCredLab starts a TLS + htpasswd registry with one user (a password
// fresh for this test, so any leak is its own), a containerd trusting the
// registry's CA through hosts.toml (and able to run pods: the lab's pause
// image), pushes a runnable image and pulls it into the node with the
// credentials.
func newCredLab(t *testing.T, l *lab.Lab, name string) *credLab {
	t.Helper()
	pass := "pw-" + randomHex(t, 12)
	reg := lab.Registry(t, name, registry.Options{TLS: true, Htpasswd: map[string]string{"puller": pass}})
	hostsTOML := fmt.Sprintf("server = %q\nca = %q\n\n[host]\n", reg.URL(), reg.CAFile())

	node := l.FreshNode(t, containerd.Options{
		Hosts:        map[string]string{reg.Addr(): hostsTOML},
		SandboxImage: l.PauseImage(),
	})
	cl := &credLab{reg: reg, node: node, user: "puller", pass: pass, ref: reg.Ref("cred/app", "v1")}
	lab.Push(t, "cred/app", "v1", registry.ImageOptions{Sleeper: true}, reg)
	cl.node.Pull(t, cl.ref, cl.auth())
	return cl
}

// auth is the right credential, as the kubelet passes it to PullImage.
func (cl *credLab) auth() *runtimeapi.AuthConfig {
	return &runtimeapi.AuthConfig{Username: cl.user, Password: cl.pass}
}

// authWith is another credential for the registry.
func (cl *credLab) authWith(user, pass string) *runtimeapi.AuthConfig {
	return &runtimeapi.AuthConfig{Username: user, Password: pass}
}

// dockerConfig writes a config.json with user:pass for the registry (in
// the form key → the registry host as config.json files name it) and
// returns its path.
func (cl *credLab) dockerConfig(t *testing.T, key, user, pass string) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"auths": map[string]any{key: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass)),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// expectCredential checks an image's status and credential_source and that
// the password appears nowhere in the agent's output (debug logs included
// when the run asked for them).
func (cl *credLab) expectCredential(t *testing.T, run agentcheck.Result, status, source string) {
	t.Helper()
	found := false
	for _, im := range run.Report.Images {
		if im.Image != cl.ref {
			continue
		}
		found = true
		t.Logf("%s: status=%s credential_source=%q reason=%q", im.Image, im.Status, im.CredentialSource, im.Reason)
		if im.Status != status || im.CredentialSource != source {
			t.Errorf("%s: status %q credential_source %q, want %q %q%s", im.Image, im.Status, im.CredentialSource, status, source, run.Dump())
		}
	}
	if !found {
		t.Fatalf("%s not in the report%s", cl.ref, run.Dump())
	}
	for _, leak := range []string{cl.pass, base64.StdEncoding.EncodeToString([]byte(cl.user + ":" + cl.pass))} {
		if strings.Contains(run.Stdout+run.Stderr, leak) {
			t.Errorf("the registry password appears in the agent's output%s", run.Dump())
		}
	}
}

// buildCredProvider builds harness/credprovider into a fresh bin dir under
// the name the provider config gives it and returns the dir.
func buildCredProvider(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	root, err := checkout.Root()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "./harness/credprovider")
	cmd.Dir = filepath.Join(root, "e2e")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the credential provider plugin: %v\n%s", err, out)
	}
	return dir
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
