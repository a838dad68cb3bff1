package credentials

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// TestSecretsNeverShown drives every source, working and broken, with a
// known secret and checks that it appears in no log record (debug
// included), no error, and no formatting of the returned credentials.
func TestSecretsNeverShown(t *testing.T) {
	const secret = "pw-S3CRET-9f8e7d"
	leaks := []string{secret, b64("user:" + secret), strings.TrimRight(b64("user:"+secret), "=")}

	log, logs := testLogger()
	prev := slog.Default()
	slog.SetDefault(log)
	t.Cleanup(func() { slog.SetDefault(prev) })
	ctx := context.Background()

	// Node keyring: a good file, and a broken one holding the secret.
	root := t.TempDir()
	good := filepath.Join(root, "good", "config.json")
	writeFile(t, good, configJSON("registry.example", "user", secret))
	broken := filepath.Join(root, "broken", "config.json")
	writeFile(t, broken, `{"auths":{"registry.example":{"auth":"`+secret+`","password":"`+secret+`"} `+secret)
	brokenAuth := filepath.Join(root, "brokenauth", "config.json")
	writeFile(t, brokenAuth, `{"auths":{"registry.example":{"auth":"`+b64(secret)+`"}}}`)

	// Pull secrets: the aggregator lends the secret, and says a corrupt
	// one cannot be used (its problem text, as the aggregator words it).
	ps, err := NewPullSecrets(PullSecretsOptions{NodeName: "node-a", Log: log, Lender: &fakeLender{resp: &pb.CredentialsResponse{
		Credentials: []*pb.LentCredential{{Username: "user", Password: secret, Secret: "shop/good"}},
		Problems:    []string{"shop/corrupt: type kubernetes.io/dockerconfigjson: not valid JSON (syntax error at byte 40)"},
	}}})
	if err != nil {
		t.Fatal(err)
	}

	// Plugins: one answering the secret, one failing with it on stderr,
	// one answering garbage that holds it.
	l := newPluginLab(t, `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: script
    matchImages: ["registry.example"]
    defaultCacheDuration: 0s
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env: [{name: PW_DIR, value: "$DIR"}]
  - name: failing
    matchImages: ["registry.example"]
    defaultCacheDuration: 0s
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env: [{name: PW_DIR, value: "$DIR/failing"}]
  - name: garbage
    matchImages: ["registry.example"]
    defaultCacheDuration: 0s
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env: [{name: PW_DIR, value: "$DIR/garbage"}]
`)
	l.respond(t, response("Image", "", map[string][2]string{"registry.example": {"user", secret + "-plugin"}}))
	for _, name := range []string{"failing", "garbage"} {
		writeFile(t, filepath.Join(l.binDir, name), strings.Replace(scriptPlugin, "stderr may hold s3cr3t-stderr", secret, 1))
		if err := os.Chmod(filepath.Join(l.binDir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(l.dir, "failing", "fail"), "")
	writeFile(t, filepath.Join(l.dir, "garbage", "response.json"), `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{"registry.example":{"username":"user","password":"`+secret+`","bad":1}}}`)
	plugins, err := LoadPlugins(ctx, PluginsOptions{Config: l.config, BinDir: l.binDir, Log: log, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}

	ref := mustRef(t, "registry.example/app:v1")
	pods := []Pod{{"shop", "web", "uid-web"}}
	var shown []string
	var found int
	for _, p := range []Provider{
		NewNodeKeyring(KeyringOptions{DockerConfig: good, Log: log}),
		NewNodeKeyring(KeyringOptions{DockerConfig: broken, Log: log}),
		NewNodeKeyring(KeyringOptions{DockerConfig: brokenAuth, Log: log}),
		ps, plugins,
		NewChain(ps, NewNodeKeyring(KeyringOptions{DockerConfig: good, Log: log}), plugins),
	} {
		creds, err := p.Lookup(ctx, ref, pods)
		if err != nil {
			shown = append(shown, err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err))
		}
		for _, c := range creds {
			if strings.HasPrefix(c.Secret, secret) {
				found++
			}
		}
		shown = append(shown, fmt.Sprintf("%v", creds), fmt.Sprintf("%+v", creds), fmt.Sprintf("%#v", creds), fmt.Sprint(creds))
		for _, c := range creds {
			shown = append(shown, fmt.Sprintf("%v|%+v|%#v|%s", c, c, c, c))
		}
	}
	if found < 5 {
		t.Fatalf("the sources found the secret %d times; the test does not exercise them", found)
	}
	shown = append(shown, logs.String())
	for _, s := range shown {
		for _, leak := range leaks {
			if strings.Contains(s, leak) {
				t.Errorf("secret shown:\n%s", s)
			}
		}
	}
	// The broken sources did say what is wrong.
	for _, want := range []string{broken, brokenAuth, "shop/corrupt", "credential provider failing", "credential provider garbage"} {
		if !strings.Contains(strings.Join(shown, "\n"), want) {
			t.Errorf("nothing says what is wrong with %s", want)
		}
	}
}
