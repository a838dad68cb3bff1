package credentials

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/pkg/logging/logtest"
)

// quiet is for tests that do not read the log.
var quiet = slog.New(slog.DiscardHandler)

// testLogger captures every log record, debug included.
func testLogger() (*slog.Logger, *logtest.Buffer) { return logtest.New() }

func mustRef(t testing.TB, s string) imageref.Ref {
	t.Helper()
	r, err := imageref.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func configJSON(registry, user, pass string) string {
	return `{"auths":{"` + registry + `":{"auth":"` + b64(user+":"+pass) + `"}}}`
}

func TestDefaultKeyringSearchPath(t *testing.T) {
	var got []string
	for _, f := range defaultKeyringSearchPath(hostfs.New("/host")) {
		got = append(got, f.path)
	}
	want := []string{
		"/host/var/lib/kubelet/config.json", "/host/config.json", "/host/root/.docker/config.json", "/host/.docker/config.json",
		"/host/var/lib/kubelet/.dockercfg", "/host/.dockercfg", "/host/root/.dockercfg",
	}
	if !slices.Equal(got, want) {
		t.Errorf("search path\n got %q\nwant %q", got, want)
	}
}

func TestNodeKeyringSearchOrder(t *testing.T) {
	ctx := context.Background()
	ref := mustRef(t, "registry.example/team/app:v1")
	tests := []struct {
		name     string
		files    map[string]string // relative to the host root
		wantUser []string
		wantLog  string
	}{
		{name: "nothing", wantLog: "no node keyring file found"},
		{name: "kubelet root dir first", files: map[string]string{
			"var/lib/kubelet/config.json": configJSON("registry.example", "kubelet", "1"),
			"root/.docker/config.json":    configJSON("registry.example", "home", "2"),
		}, wantUser: []string{"kubelet"}, wantLog: "var/lib/kubelet/config.json"},
		{name: "corrupt file skipped, next used", files: map[string]string{
			"var/lib/kubelet/config.json": `{"auths":`,
			"root/.docker/config.json":    configJSON("registry.example", "home", "2"),
		}, wantUser: []string{"home"}, wantLog: "node keyring file skipped"},
		{name: "a valid empty config.json stops the search", files: map[string]string{
			"var/lib/kubelet/config.json": `{"credsStore":"desktop"}`,
			"root/.docker/config.json":    configJSON("registry.example", "home", "2"),
		}, wantLog: "credsStore"},
		{name: "empty file skipped quietly (FileOrCreate mounts)", files: map[string]string{
			"var/lib/kubelet/config.json": "",
			"root/.docker/config.json":    configJSON("registry.example", "home", "2"),
		}, wantUser: []string{"home"}, wantLog: "root/.docker/config.json"},
		{name: "dockercfg after every config.json", files: map[string]string{
			"var/lib/kubelet/.dockercfg": `{"registry.example":{"auth":"` + b64("legacy:3") + `"}}`,
		}, wantUser: []string{"legacy"}},
		{name: "config.json beats an earlier dockercfg", files: map[string]string{
			"var/lib/kubelet/.dockercfg": `{"registry.example":{"auth":"` + b64("legacy:3") + `"}}`,
			".docker/config.json":        configJSON("registry.example", "rootdocker", "4"),
		}, wantUser: []string{"rootdocker"}},
		{name: "other registry", files: map[string]string{
			"var/lib/kubelet/config.json": configJSON("other.example", "x", "5"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for p, c := range tt.files {
				writeFile(t, filepath.Join(root, p), c)
			}
			log, logs := testLogger()
			k := NewNodeKeyring(KeyringOptions{Root: hostfs.New(root), Log: log})
			creds, err := k.Lookup(ctx, ref, nil)
			// A file skipped because it does not parse is named in the
			// error (the credentials found are returned all the same).
			if err != nil && !strings.Contains(err.Error(), "skipped, as the kubelet skips it") {
				t.Fatal(err)
			}
			var users []string
			for _, c := range creds {
				users = append(users, c.Username)
				if c.Source != SourceNodeKeyring {
					t.Errorf("source %q", c.Source)
				}
			}
			if !slices.Equal(users, tt.wantUser) {
				t.Errorf("users %v, want %v", users, tt.wantUser)
			}
			if !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("log lacks %q:\n%s", tt.wantLog, logs)
			}
		})
	}
}

func TestNodeKeyringCorruptFileLoggedOnceNamingIt(t *testing.T) {
	root := t.TempDir()
	bad := filepath.Join(root, "var/lib/kubelet/config.json")
	writeFile(t, bad, `{"auths":{"registry.example":{"auth":"not base64!"}}}`)
	now := time.Unix(1000, 0)
	log, logs := testLogger()
	k := NewNodeKeyring(KeyringOptions{Root: hostfs.New(root), Log: log, Now: func() time.Time { return now }})
	ref := mustRef(t, "registry.example/app:v1")
	for range 3 {
		now = now.Add(time.Minute)
		if _, err := k.Lookup(context.Background(), ref, nil); err == nil || !strings.Contains(err.Error(), bad) {
			t.Fatalf("Lookup error %v does not name %s", err, bad)
		}
	}
	if n := strings.Count(logs.String(), "node keyring file skipped"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), bad) || !strings.Contains(logs.String(), "fix or remove the file") {
		t.Errorf("log does not name the file and the fix:\n%s", logs)
	}
	// Fixing the file is picked up.
	writeFile(t, bad, configJSON("registry.example", "fixed", "pw")+"\n")
	now = now.Add(time.Minute)
	creds, _ := k.Lookup(context.Background(), ref, nil)
	if len(creds) != 1 || creds[0].Username != "fixed" {
		t.Errorf("after the fix: %v", creds)
	}
}

func TestNodeKeyringDockerConfigFlag(t *testing.T) {
	dir := t.TempDir()
	ref := mustRef(t, "registry.example/app:v1")
	ctx := context.Background()

	file := filepath.Join(dir, "mounted.json")
	writeFile(t, file, configJSON("registry.example", "file", "1"))
	if c, _ := NewNodeKeyring(KeyringOptions{DockerConfig: file, Root: hostfs.New("/nonexistent"), Log: quiet}).Lookup(ctx, ref, nil); len(c) != 1 || c[0].Username != "file" {
		t.Errorf("file: %v", c)
	}

	legacyDir := filepath.Join(dir, "legacy")
	writeFile(t, filepath.Join(legacyDir, ".dockercfg"), `{"registry.example":{"auth":"`+b64("legacy:2")+`"}}`)
	if c, _ := NewNodeKeyring(KeyringOptions{DockerConfig: legacyDir, Log: quiet}).Lookup(ctx, ref, nil); len(c) != 1 || c[0].Username != "legacy" {
		t.Errorf("dir with .dockercfg: %v", c)
	}
	if c, _ := NewNodeKeyring(KeyringOptions{DockerConfig: filepath.Join(legacyDir, ".dockercfg"), Log: quiet}).Lookup(ctx, ref, nil); len(c) != 1 {
		t.Errorf(".dockercfg file: %v", c)
	}

	big := filepath.Join(dir, "big.json")
	writeFile(t, big, configJSON("registry.example", "big", "3")+strings.Repeat(" ", maxConfigBytes))
	log, logs := testLogger()
	if c, _ := NewNodeKeyring(KeyringOptions{DockerConfig: big, Log: log}).Lookup(ctx, ref, nil); len(c) != 0 {
		t.Errorf("a file over 1 MiB was used: %v", c)
	}
	if !strings.Contains(logs.String(), "larger than") {
		t.Errorf("no log about the size:\n%s", logs)
	}
}

func TestNodeKeyringRecheck(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.json")
	writeFile(t, file, configJSON("registry.example", "one", "1"))
	now := time.Unix(1000, 0)
	k := NewNodeKeyring(KeyringOptions{DockerConfig: file, Recheck: 10 * time.Second, Log: quiet, Now: func() time.Time { return now }})
	ref := mustRef(t, "registry.example/app:v1")
	user := func() string {
		c, _ := k.Lookup(context.Background(), ref, nil)
		if len(c) != 1 {
			return ""
		}
		return c[0].Username
	}
	if u := user(); u != "one" {
		t.Fatalf("user %q", u)
	}
	writeFile(t, file, configJSON("registry.example", "two-longer", "2"))
	if u := user(); u != "one" {
		t.Errorf("re-read before the recheck interval: %q", u)
	}
	now = now.Add(11 * time.Second)
	if u := user(); u != "two-longer" {
		t.Errorf("not re-read after the recheck interval: %q", u)
	}
}
