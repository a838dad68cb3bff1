package credentials_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

// TestCredentialsProviderPlugin: the kubelet's credential provider exec
// plugins, with a plugin built for the test (harness/credprovider) that
// answers what its config's env tells it. Right credentials → available
// from credential_provider, the plugin asked for the image's repository
// name; wrong ones → unauthorized; a failing plugin → unauthorized
// (anonymous), the failure logged without the plugin's stderr; an image
// outside matchImages never runs the plugin.
func TestCredentialsProviderPlugin(t *testing.T) {
	l := lab.Need(t)
	cl := newCredLab(t, l, "cred-plugin")
	const name = "pullwatch-e2e-credprovider"
	binDir := buildCredProvider(t, name)

	// config writes a CredentialProviderConfig with the plugin's env and
	// returns its path and the plugin's request log.
	config := func(t *testing.T, matchImage string, env map[string]string) (string, string) {
		t.Helper()
		dir := t.TempDir()
		logFile := filepath.Join(dir, "requests.log")
		envList := []map[string]string{{"name": "CREDPROVIDER_LOG", "value": logFile}}
		for k, v := range env {
			envList = append(envList, map[string]string{"name": k, "value": v})
		}
		cfg := map[string]any{
			"apiVersion": "kubelet.config.k8s.io/v1",
			"kind":       "CredentialProviderConfig",
			"providers": []map[string]any{{
				"name":                 name,
				"matchImages":          []string{matchImage},
				"defaultCacheDuration": "1m",
				"apiVersion":           "credentialprovider.kubelet.k8s.io/v1",
				"env":                  envList,
			}},
		}
		b, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// YAML, as kubelet configs usually are: JSON is YAML.
		p := filepath.Join(dir, "credential-provider.yaml")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p, logFile
	}
	requests := func(logFile string) []string {
		b, _ := os.ReadFile(logFile)
		return strings.Fields(string(b))
	}
	args := func(cfg string) []string {
		return []string{"--image-credential-provider-config", cfg, "--image-credential-provider-bin-dir", binDir, "--log-level", "debug"}
	}
	repoName := cl.reg.Addr() + "/cred/app" // the ref without its tag

	t.Run("right credentials", func(t *testing.T) {
		cfg, logFile := config(t, cl.reg.Addr(), map[string]string{"CREDPROVIDER_USERNAME": cl.user, "CREDPROVIDER_PASSWORD": cl.pass})
		run := cl.node.Check(t, args(cfg)...)
		cl.expectCredential(t, run, "available", "credential_provider")
		if got := requests(logFile); len(got) != 1 || got[0] != repoName {
			t.Errorf("plugin requests %q, want one for %s (the repository name, as the kubelet asks)", got, repoName)
		}
	})

	t.Run("wildcard matchImages, credentials from a file", func(t *testing.T) {
		credFile := filepath.Join(t.TempDir(), "cred.json")
		b, _ := json.Marshal(map[string]string{"username": cl.user, "password": cl.pass})
		if err := os.WriteFile(credFile, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, port, _ := strings.Cut(cl.reg.Addr(), ":")
		cfg, _ := config(t, "127.0.0.*:"+port, map[string]string{"CREDPROVIDER_FILE": credFile})
		cl.expectCredential(t, cl.node.Check(t, args(cfg)...), "available", "credential_provider")
	})

	t.Run("wrong credentials", func(t *testing.T) {
		cfg, _ := config(t, cl.reg.Addr(), map[string]string{"CREDPROVIDER_USERNAME": cl.user, "CREDPROVIDER_PASSWORD": "wrong-" + cl.pass})
		cl.expectCredential(t, cl.node.Check(t, args(cfg)...), "unauthorized", "credential_provider")
		_ = cl.node.ExpectPull(t, cl.ref, cl.authWith(cl.user, "wrong-"+cl.pass), false, "the plugin's credentials are wrong")
	})

	t.Run("failing plugin: logged without its stderr", func(t *testing.T) {
		cfg, _ := config(t, cl.reg.Addr(), map[string]string{"CREDPROVIDER_FAIL": "stderr-has-" + cl.pass})
		run := cl.node.Check(t, args(cfg)...)
		cl.expectCredential(t, run, "unauthorized", "anonymous")
		if !strings.Contains(run.Stderr, "credential provider "+name) || !strings.Contains(run.Stderr, "exit status 1") {
			t.Errorf("the plugin's failure is not logged with its name and exit status%s", run.Dump())
		}
	})

	t.Run("image outside matchImages: plugin not run", func(t *testing.T) {
		cfg, logFile := config(t, "registry.invalid", map[string]string{"CREDPROVIDER_USERNAME": cl.user, "CREDPROVIDER_PASSWORD": cl.pass})
		cl.expectCredential(t, cl.node.Check(t, args(cfg)...), "unauthorized", "anonymous")
		if got := requests(logFile); len(got) != 0 {
			t.Errorf("plugin ran for %q", got)
		}
	})

	t.Run("config file absent: plugins off, said once", func(t *testing.T) {
		run := cl.node.Check(t, args(filepath.Join(t.TempDir(), "absent.yaml"))...)
		cl.expectCredential(t, run, "unauthorized", "anonymous")
		if n := strings.Count(run.Stderr, "credential provider plugins off"); n != 1 {
			t.Errorf("%d log lines about plugins being off, want 1%s", n, run.Dump())
		}
	})
}
