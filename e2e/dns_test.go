package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// dnsServer answers A queries for names under zone with 127.0.0.1 and
// NXDOMAIN for the rest: the node's own nameserver, as far as the agent
// can tell. A resolv.conf cannot name a port, so it listens on port 53 of
// a loopback address of its own.
func dnsServer(t *testing.T, addr, zone string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s for a test nameserver: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dnsmessage.Message
			if err := q.Unpack(buf[:n]); err != nil || len(q.Questions) != 1 {
				continue
			}
			question := q.Questions[0]
			resp := dnsmessage.Message{Header: dnsmessage.Header{ID: q.ID, Response: true, Authoritative: true}, Questions: q.Questions}
			name := strings.TrimSuffix(question.Name.String(), ".")
			switch {
			case !strings.HasSuffix(name, zone):
				resp.RCode = dnsmessage.RCodeNameError
			case question.Type == dnsmessage.TypeA:
				resp.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5},
					Body:   &dnsmessage.AResource{A: [4]byte{127, 0, 0, 1}},
				}}
			}
			if out, err := resp.Pack(); err == nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
}

// TestNodeResolver: registry names resolve with the nameservers of the
// node's resolv.conf (--resolv-conf), not the agent's own.
func TestNodeResolver(t *testing.T) {
	l := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const zone = "pullwatch.test"
	dnsServer(t, "127.0.0.153:53", zone)

	if _, err := registry.PushImage(ctx, l.reg, "dns/app", "v1", registry.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.containerd.PullImage(ctx, l.reg.Ref("dns/app", "v1"), nil); err != nil {
		t.Fatal(err)
	}
	// The node knows the image by a name only its nameserver resolves.
	_, port, _ := net.SplitHostPort(l.reg.Addr())
	name := "registry." + zone + ":" + port + "/dns/app:v1"
	tag := exec.CommandContext(ctx, "ctr", "--address", l.containerd.Socket(), "--namespace", "k8s.io", "images", "tag", "--force", l.reg.Ref("dns/app", "v1"), name)
	if out, err := tag.CombinedOutput(); err != nil {
		t.Fatalf("ctr images tag: %v\n%s", err, out)
	}

	// Not a loopback name, so containerd (and the agent) would use https:
	// the node's hosts.toml says this registry speaks plain HTTP.
	host := "registry." + zone + ":" + port
	if err := l.containerd.SetHostsTOML(host, "server = \"http://"+host+"\"\n"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tt := range []struct {
		name, nameserver, status, reason string
	}{
		{"node nameserver knows the registry", "127.0.0.153", "available", ""},
		{"node nameserver unreachable", "127.0.0.154", "unreachable", "127.0.0.154:53"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rc := filepath.Join(dir, tt.nameserver+".resolv.conf")
			if err := os.WriteFile(rc, []byte("nameserver "+tt.nameserver+"\noptions timeout:1 attempts:1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			stdout, stderr, _ := runAgent(t, l, "check", "-o", "json", "--cri-endpoint", l.containerd.Endpoint(), "--resolv-conf", rc, "--probe-timeout", "5s",
				"--containerd-config", l.containerd.ConfigPath())
			out := parseCheck(t, stdout, stderr)
			found := false
			for _, im := range out.Images {
				if im.Image != "registry."+zone+":"+port+"/dns/app:v1" {
					continue
				}
				found = true
				t.Logf("%s with nameserver %s: %s %q", im.Image, tt.nameserver, im.Status, im.Reason)
				if im.Status != tt.status || !strings.Contains(im.Reason, tt.reason) {
					t.Errorf("status %s %q, want %s containing %q", im.Status, im.Reason, tt.status, tt.reason)
				}
			}
			if !found {
				t.Fatalf("image %s not in the report:\n%s", name, stdout)
			}
		})
	}
}
