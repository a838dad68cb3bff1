package cli

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pullwatch/pullwatch/agent/pkg/credentials"
	"github.com/pullwatch/pullwatch/agent/pkg/cri"
	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/netpath"
	"github.com/pullwatch/pullwatch/pkg/envflag"
)

// TestHostRootOptionalFiles: under a host root holding only the node's
// resolv.conf (a containerd node without /etc/containers, a CRI-O node
// without /etc/containerd, no units, no keyring), the agent sets up for
// either runtime; only --host-root itself and resolv.conf are required,
// and their absence is an error naming the path and the fix.
func TestHostRootOptionalFiles(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/resolv.conf"), []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	newCommon := func(hostRoot string) *common {
		return &common{nodeName: "node-1", hostRoot: hostRoot, proxyFrom: netpath.ProxyFromSystemd, resolvConf: "/etc/resolv.conf"}
	}

	c := newCommon(root)
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	path, err := c.networkPath(ctx, log, "containerd")
	if err != nil {
		t.Fatalf("network path: %v", err)
	}
	if path.Resolver == nil || path.Resolver.Nameservers[0] != "127.0.0.53:53" {
		t.Fatalf("the node's resolv.conf was not used: %+v", path.Resolver)
	}
	for _, rt := range []string{"containerd", "cri-o"} {
		if _, err := c.registryResolver(ctx, log, cri.Runtime{Name: rt, Version: "2.0.0"}, path); err != nil {
			t.Errorf("%s without its configuration files: %v", rt, err)
		}
	}

	if err := os.Remove(filepath.Join(root, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.networkPath(ctx, log, "containerd"); err == nil || !strings.Contains(err.Error(), filepath.Join(root, "etc/resolv.conf")) || !strings.Contains(err.Error(), "--host-root") {
		t.Errorf("missing resolv.conf: %v; want an error naming the path and --host-root", err)
	}
	missing := filepath.Join(root, "absent")
	if err := newCommon(missing).validate(); err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "mount") {
		t.Errorf("missing host root: %v; want an error naming it and the fix", err)
	}
}

// TestNodePathsDocumented: docs/node-path.md's table of what the agent
// reads from the node lists every node path the agent reads with its
// default flags (the DaemonSet's mounts are checked against that table in
// aggregator/deploy_test.go).
func TestNodePathsDocumented(t *testing.T) {
	var c common
	c.register(envflag.New("check", "", ""), Env{Hostname: func() (string, error) { return "n", nil }})
	read := []string{c.containerdConfig, c.registriesConf, c.registriesConfDir, hosts.DefaultCRIOCertsDir, c.resolvConf}
	read = append(read, filepath.SplitList(hosts.DefaultConfigPath)...)
	read = append(read, netpath.UnitPaths("containerd.service")...)
	read = append(read, netpath.UnitPaths("crio.service")...)
	read = append(read, netpath.CertFiles...)
	read = append(read, netpath.CertDirs...)
	read = append(read, credentials.DefaultKeyringSearchPath()...)
	if c.providerConfig != "" || c.providerBinDir != "" || c.dockerConfig != "" || c.registryConfigPath != "" {
		t.Fatal("a node path flag has a default now: add what it reads to this test and to docs/node-path.md")
	}

	b, err := os.ReadFile("../../../docs/node-path.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "### What the agent reads from the node\n")
	if !ok {
		t.Fatal("docs/node-path.md has no section \"What the agent reads from the node\"")
	}
	section, _, _ = strings.Cut(section, "\n#")
	var listed []string
	for _, m := range regexp.MustCompile(`(?m)^\| ([^|]*) \|`).FindAllStringSubmatch(section, -1) {
		for _, p := range regexp.MustCompile("`(/[^`]*)`").FindAllStringSubmatch(m[1], -1) {
			listed = append(listed, p[1])
		}
	}
	for _, p := range read {
		if !slices.ContainsFunc(listed, func(l string) bool { return p == l || strings.HasPrefix(p, l+"/") }) {
			t.Errorf("the agent reads the node's %s, which docs/node-path.md's table does not list", p)
		}
	}
}
