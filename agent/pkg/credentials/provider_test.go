package credentials

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/pkg/logging/logtest"

	"github.com/pullwatch/pullwatch/pkg/dockerauth"
)

// scriptPlugin is a credential provider plugin written as a shell script:
// it saves its request and environment, counts its runs and answers
// $PW_DIR/response.json, unless $PW_DIR/fail exists.
const scriptPlugin = `#!/bin/sh
cat > "$PW_DIR/request.json"
echo "$PW_EXTRA" > "$PW_DIR/env"
echo "$*" > "$PW_DIR/args"
echo run >> "$PW_DIR/runs"
if [ -e "$PW_DIR/fail" ]; then echo "stderr may hold s3cr3t-stderr" >&2; exit 3; fi
if [ -e "$PW_DIR/sleep" ]; then sleep 5; fi
cat "$PW_DIR/response.json"
`

type pluginLab struct {
	dir, binDir, config string
}

func newPluginLab(t *testing.T, providers string) *pluginLab {
	t.Helper()
	dir := t.TempDir()
	l := &pluginLab{dir: dir, binDir: filepath.Join(dir, "bin"), config: filepath.Join(dir, "config.yaml")}
	writeFile(t, filepath.Join(l.binDir, "script"), scriptPlugin)
	if err := os.Chmod(filepath.Join(l.binDir, "script"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, l.config, strings.ReplaceAll(providers, "$DIR", dir))
	return l
}

func (l *pluginLab) respond(t *testing.T, resp string) {
	t.Helper()
	writeFile(t, filepath.Join(l.dir, "response.json"), resp)
}

func (l *pluginLab) runs() int {
	b, _ := os.ReadFile(filepath.Join(l.dir, "runs"))
	return strings.Count(string(b), "run")
}

const oneProvider = `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: script
    matchImages: ["*.example", "127.0.0.1:5000"]
    defaultCacheDuration: 10m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials, --verbose]
    env:
      - {name: PW_DIR, value: "$DIR"}
      - {name: PW_EXTRA, value: from-config}
`

func response(cacheKeyType, cacheDuration string, auth map[string][2]string) string {
	a := map[string]map[string]string{}
	for k, v := range auth {
		a[k] = map[string]string{"username": v[0], "password": v[1]}
	}
	r := map[string]any{"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderResponse", "cacheKeyType": cacheKeyType, "auth": a}
	if cacheDuration != "" {
		r["cacheDuration"] = cacheDuration
	}
	b, _ := json.Marshal(r)
	return string(b)
}

func loadPlugins(t *testing.T, l *pluginLab, now *time.Time) (*Plugins, *logtest.Buffer) {
	t.Helper()
	log, logs := testLogger()
	opts := PluginsOptions{Config: l.config, BinDir: l.binDir, Log: log, Timeout: 2 * time.Second,
		Environ: func() []string { return []string{"PATH=" + os.Getenv("PATH"), "PW_EXTRA=from-agent"} }}
	if now != nil {
		opts.Now = func() time.Time { return *now }
	}
	ps, err := LoadPlugins(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return ps, logs
}

func TestPluginsExec(t *testing.T) {
	l := newPluginLab(t, oneProvider)
	l.respond(t, response("Image", "", map[string][2]string{
		"registry.example":      {"host", "h"},
		"registry.example/team": {"team", "t"},
		"other.example":         {"other", "o"},
	}))
	ps, _ := loadPlugins(t, l, nil)
	creds, err := ps.Lookup(context.Background(), mustRef(t, "registry.example/team/app:v1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := users(creds); !slices.Equal(got, []string{"team", "host"}) {
		t.Errorf("users %v, want the most specific pattern first", got)
	}
	for _, c := range creds {
		if c.Source != SourceCredentialProvider {
			t.Errorf("source %q", c.Source)
		}
	}
	req, _ := os.ReadFile(filepath.Join(l.dir, "request.json"))
	var got map[string]any
	if err := json.Unmarshal(req, &got); err != nil {
		t.Fatalf("request %q: %v", req, err)
	}
	want := map[string]any{"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest", "image": "registry.example/team/app"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("request %v, want %v", got, want)
	}
	if env, _ := os.ReadFile(filepath.Join(l.dir, "env")); strings.TrimSpace(string(env)) != "from-config" {
		t.Errorf("config env does not win over the inherited one: %q", env)
	}
	if args, _ := os.ReadFile(filepath.Join(l.dir, "args")); strings.TrimSpace(string(args)) != "get-credentials --verbose" {
		t.Errorf("args %q", args)
	}

	// Images outside matchImages never run the plugin.
	before := l.runs()
	for _, img := range []string{"ghcr.io/x/y:v1", "a.b.example/x:v1", "127.0.0.1:5001/x:v1"} {
		if creds, err := ps.Lookup(context.Background(), mustRef(t, img), nil); err != nil || len(creds) != 0 {
			t.Errorf("%s: %v %v", img, creds, err)
		}
	}
	if l.runs() != before {
		t.Error("plugin ran for an image it does not match")
	}
}

func TestPluginsCache(t *testing.T) {
	tests := []struct {
		name, keyType, duration string
		// images looked up in order, and the runs expected after each
		images []string
		runs   []int
	}{
		{"image key", "Image", "", []string{"a.example/x:1", "a.example/x:2", "a.example/y:1"}, []int{1, 1, 2}},
		{"registry key", "Registry", "", []string{"a.example/x:1", "a.example/y:1", "b.example/x:1"}, []int{1, 1, 2}},
		{"global key", "Global", "", []string{"a.example/x:1", "b.example/y:1"}, []int{1, 1}},
		{"zero duration not cached", "Global", "0s", []string{"a.example/x:1", "a.example/x:1"}, []int{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newPluginLab(t, oneProvider)
			l.respond(t, response(tt.keyType, tt.duration, map[string][2]string{"*.example": {"u", "p"}}))
			ps, _ := loadPlugins(t, l, nil)
			for i, img := range tt.images {
				if creds, err := ps.Lookup(context.Background(), mustRef(t, img), nil); err != nil || len(creds) != 1 {
					t.Fatalf("%s: %v %v", img, creds, err)
				}
				if got := l.runs(); got != tt.runs[i] {
					t.Errorf("after %s: %d runs, want %d", img, got, tt.runs[i])
				}
			}
		})
	}

	// Expiry: the response's cacheDuration, else defaultCacheDuration.
	l := newPluginLab(t, oneProvider)
	l.respond(t, response("Global", "1m", map[string][2]string{"*.example": {"u", "p"}}))
	now := time.Unix(1000, 0)
	ps, _ := loadPlugins(t, l, &now)
	ref := mustRef(t, "a.example/x:1")
	_, _ = ps.Lookup(context.Background(), ref, nil)
	now = now.Add(59 * time.Second)
	_, _ = ps.Lookup(context.Background(), ref, nil)
	now = now.Add(2 * time.Second)
	_, _ = ps.Lookup(context.Background(), ref, nil)
	if l.runs() != 2 {
		t.Errorf("%d runs, want 2 (cached for the response's 1m)", l.runs())
	}
}

func TestPluginsFailures(t *testing.T) {
	ctx := context.Background()
	ref := mustRef(t, "a.example/x:1")
	tests := []struct {
		name, resp string
		setup      func(l *pluginLab)
		want       string
	}{
		{name: "exit status", setup: func(l *pluginLab) { writeFile(t, filepath.Join(l.dir, "fail"), "") }, want: "exit status 3"},
		{name: "timeout", setup: func(l *pluginLab) { writeFile(t, filepath.Join(l.dir, "sleep"), "") },
			resp: response("Image", "", nil), want: "no answer within"},
		{name: "wrong apiVersion", resp: strings.Replace(response("Image", "", nil), "/v1", "/v1beta1", 1), want: `apiVersion "credentialprovider.kubelet.k8s.io/v1beta1"`},
		{name: "wrong kind", resp: `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"Other","cacheKeyType":"Image"}`, want: `kind "Other"`},
		{name: "bad cacheKeyType", resp: response("Pod", "", nil), want: `cacheKeyType "Pod"`},
		{name: "unknown field", resp: `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","s3cr3t-field":1}`, want: "not a valid CredentialProviderResponse"},
		{name: "not JSON", resp: "s3cr3t-stdout", want: "not valid JSON"},
		{name: "too large", resp: strings.Repeat("s3cr3t-stdout ", dockerauth.MaxConfigBytes/8), want: "more than 1048576 bytes"},
		{name: "binary missing", setup: func(l *pluginLab) { _ = os.Remove(filepath.Join(l.binDir, "script")) }, want: "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newPluginLab(t, oneProvider)
			l.respond(t, tt.resp)
			if tt.setup != nil {
				tt.setup(l)
			}
			ps, logs := loadPlugins(t, l, nil)
			creds, err := ps.Lookup(ctx, ref, nil)
			if err == nil || len(creds) != 0 {
				t.Fatalf("creds %v, err %v", creds, err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "credential provider script") {
				t.Errorf("error %q lacks %q or the provider name", err, tt.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(logs.String(), "s3cr3t") {
				t.Errorf("plugin output leaked: %v\n%s", err, logs)
			}
		})
	}
}

func TestPluginsFailureBackoff(t *testing.T) {
	l := newPluginLab(t, oneProvider)
	l.respond(t, response("Image", "", map[string][2]string{"*.example": {"u", "p"}}))
	now := time.Unix(1000, 0)
	ps, _ := loadPlugins(t, l, &now)
	ctx := context.Background()
	// A cached answer stays usable while the plugin fails.
	if _, err := ps.Lookup(ctx, mustRef(t, "a.example/cached:1"), nil); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(l.dir, "fail"), "")
	for _, img := range []string{"a.example/x:1", "a.example/y:1", "a.example/z:1"} {
		if _, err := ps.Lookup(ctx, mustRef(t, img), nil); err == nil {
			t.Fatalf("%s: no error", img)
		}
	}
	if l.runs() != 2 {
		t.Errorf("%d runs, want 2: a failed plugin is not run again during the backoff", l.runs())
	}
	if creds, err := ps.Lookup(ctx, mustRef(t, "a.example/cached:1"), nil); err != nil || len(creds) != 1 {
		t.Errorf("cached answer during backoff: %v %v", creds, err)
	}
	_ = os.Remove(filepath.Join(l.dir, "fail"))
	now = now.Add(31 * time.Second)
	if creds, err := ps.Lookup(ctx, mustRef(t, "a.example/x:1"), nil); err != nil || len(creds) != 1 {
		t.Errorf("after the backoff: %v %v", creds, err)
	}
}

func TestPluginsMergeProviders(t *testing.T) {
	l := newPluginLab(t, `{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig","providers":[
	  {"name":"script","matchImages":["*.example"],"defaultCacheDuration":"0s","apiVersion":"credentialprovider.kubelet.k8s.io/v1","env":[{"name":"PW_DIR","value":"$DIR"}]},
	  {"name":"second","matchImages":["*.example"],"defaultCacheDuration":"0s","apiVersion":"credentialprovider.kubelet.k8s.io/v1","env":[{"name":"PW_DIR","value":"$DIR/second"}]}]}`)
	writeFile(t, filepath.Join(l.binDir, "second"), scriptPlugin)
	if err := os.Chmod(filepath.Join(l.binDir, "second"), 0o755); err != nil {
		t.Fatal(err)
	}
	l.respond(t, response("Image", "", map[string][2]string{"a.example": {"first-host", "1"}}))
	writeFile(t, filepath.Join(l.dir, "second", "response.json"), response("Image", "", map[string][2]string{
		"a.example/team": {"second-path", "2"}, "a.example": {"second-host", "3"}}))
	ps, _ := loadPlugins(t, l, nil)
	creds, err := ps.Lookup(context.Background(), mustRef(t, "a.example/team/app:1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// One keyring over both answers: most specific key first, then config order.
	if got := users(creds); !slices.Equal(got, []string{"second-path", "first-host", "second-host"}) {
		t.Errorf("users %v", got)
	}
}

func TestLoadPlugins(t *testing.T) {
	ctx := context.Background()
	log, logs := testLogger()
	ps, err := LoadPlugins(ctx, PluginsOptions{Config: filepath.Join(t.TempDir(), "absent.yaml"), BinDir: "/x", Log: log})
	if err != nil || ps != nil {
		t.Errorf("missing config: %v %v", ps, err)
	}
	if !strings.Contains(logs.String(), "plugins off") {
		t.Errorf("no log line for a missing config:\n%s", logs)
	}
	if creds, err := ps.Lookup(ctx, mustRef(t, "a.example/x:1"), nil); creds != nil || err != nil {
		t.Errorf("nil Plugins lookup: %v %v", creds, err)
	}

	l := newPluginLab(t, oneProvider)
	if _, err := LoadPlugins(ctx, PluginsOptions{Config: l.config}); err == nil || !strings.Contains(err.Error(), "bin-dir") {
		t.Errorf("no bin dir: %v", err)
	}

	l = newPluginLab(t, strings.Replace(oneProvider, "    args:", "    tokenAttributes: {serviceAccountTokenAudience: x, requireServiceAccount: true, cacheType: Token}\n    args:", 1))
	log, logs = testLogger()
	ps, err = LoadPlugins(ctx, PluginsOptions{Config: l.config, BinDir: l.binDir, Log: log})
	if err != nil || len(ps.providers) != 0 || !strings.Contains(logs.String(), "tokenAttributes") {
		t.Errorf("token provider: %v %v\n%s", ps, err, logs)
	}
	// Not run, but named for the images it matches (the agent then says
	// unknown rather than a false unauthorized).
	chain := NewChain(nil, nil, ps)
	for image, want := range map[string]string{"registry.example/app:1": "script", "other.example.org/app:1": ""} {
		ref, err := imageref.Parse(image)
		if err != nil {
			t.Fatal(err)
		}
		if got := chain.NeedsServiceAccountToken(ref); got != want {
			t.Errorf("token provider for %s = %q, want %q", image, got, want)
		}
	}
}

func TestParseProviderConfig(t *testing.T) {
	valid := `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages: ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"]
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
`
	if cfg, err := parseProviderConfig([]byte(valid)); err != nil || len(cfg.Providers) != 1 || cfg.Providers[0].DefaultCacheDuration.Duration != 12*time.Hour {
		t.Errorf("valid config: %v %v", cfg, err)
	}
	for _, v := range []string{"v1alpha1", "v1beta1"} {
		if _, err := parseProviderConfig([]byte(strings.Replace(valid, "kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/"+v, 1))); err != nil {
			t.Errorf("config %s: %v", v, err)
		}
	}
	tests := []struct{ name, from, to, want string }{
		{"config apiVersion", "kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/v2", "apiVersion"},
		{"kind", "kind: CredentialProviderConfig", "kind: Other", "kind"},
		{"unknown field", "    apiVersion: credentialprovider", "    bogus: 1\n    apiVersion: credentialprovider", "unknown field"},
		{"no name", "  - name: ecr-credential-provider", "  - name: ''", "name: required"},
		{"slash in name", "name: ecr-credential-provider", "name: ../ecr", "without '/'"},
		{"plugin apiVersion", "credentialprovider.kubelet.k8s.io/v1", "credentialprovider.kubelet.k8s.io/v9", "providers[0].apiVersion"},
		{"no matchImages", `matchImages: ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"]`, "matchImages: []", "matchImages: at least one"},
		{"bad matchImage", `"*.dkr.ecr.*.amazonaws.com.cn"`, `"%zz"`, "matchImages[1]"},
		{"no duration", `    defaultCacheDuration: "12h"` + "\n", "", "defaultCacheDuration: required"},
		{"negative duration", `"12h"`, `"-1h"`, ">= 0"},
		{"no providers", "providers:\n", "providers: []\nx:\n", "unknown field"},
		{"not yaml", "kind:", "kind: [", "not a CredentialProviderConfig"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := strings.Replace(valid, tt.from, tt.to, 1)
			if in == valid {
				t.Fatalf("replacement %q not in the config", tt.from)
			}
			_, err := parseProviderConfig([]byte(in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
	dup := valid + strings.SplitN(valid, "providers:\n", 2)[1]
	if _, err := parseProviderConfig([]byte(dup)); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Errorf("duplicate names: %v", err)
	}
	if _, err := parseProviderConfig([]byte("apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders: []\n")); err == nil || !strings.Contains(err.Error(), "at least one provider") {
		t.Errorf("empty providers: %v", err)
	}
}

func FuzzParseProviderConfig(f *testing.F) {
	f.Add([]byte(oneProvider))
	f.Add([]byte(`{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig","providers":[{"name":"a","matchImages":["x"],"defaultCacheDuration":"1s","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}`))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseProviderConfig(data)
		if err != nil {
			return
		}
		for _, p := range cfg.Providers {
			if p.Name == "" || strings.Contains(p.Name, "/") || len(p.MatchImages) == 0 || p.DefaultCacheDuration == nil || p.DefaultCacheDuration.Duration < 0 {
				t.Fatalf("invalid provider accepted: %+v", p)
			}
		}
	})
}

func FuzzParsePluginResponse(f *testing.F) {
	const v1 = "credentialprovider.kubelet.k8s.io/v1"
	f.Add([]byte(response("Image", "5m", map[string][2]string{"*.example": {"u", "p"}})))
	f.Add([]byte(response("Global", "", nil)))
	f.Add([]byte(`{"apiVersion":"` + v1 + `","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"-5s","auth":{"":{}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parsePluginResponse(data, v1)
		if err != nil {
			if strings.Contains(err.Error(), "\"password\"") {
				t.Fatalf("error quotes the response: %v", err)
			}
			return
		}
		if r.cacheKeyType != "Image" && r.cacheKeyType != "Registry" && r.cacheKeyType != "Global" {
			t.Fatalf("cacheKeyType %q accepted", r.cacheKeyType)
		}
		kr := &dockerauth.Keyring{}
		kr.Add(r.entries)
		_ = kr.Lookup("a.example/x")
	})
}
