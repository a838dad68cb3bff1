package nodepath_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/pullwatch/pullwatch/e2e/harness/agentcheck"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
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

const testZone = "pullwatch.test"

// zoneImage serves a test nameserver for testZone and gives the lab node an
// image under a name only that nameserver resolves; it returns the name
// and its registry host. Not a loopback name, so containerd (and the
// agent) would use https: the node's hosts.toml says this registry speaks
// plain HTTP.
func zoneImage(t *testing.T, l *lab.Lab) (name, host string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dnsServer(t, "127.0.0.153:53", testZone)
	if _, err := registry.PushImage(ctx, l.Reg, "dns/app", "v1", registry.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Containerd.PullImage(ctx, l.Reg.Ref("dns/app", "v1"), nil); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Reg.Addr())
	host = "registry." + testZone + ":" + port
	name = host + "/dns/app:v1"
	tag := exec.CommandContext(ctx, "ctr", "--address", l.Containerd.Socket(), "--namespace", "k8s.io", "images", "tag", "--force", l.Reg.Ref("dns/app", "v1"), name)
	if out, err := tag.CombinedOutput(); err != nil {
		t.Fatalf("ctr images tag: %v\n%s", err, out)
	}
	if err := l.Containerd.SetHostsTOML(host, plainHTTPHosts(host)); err != nil {
		t.Fatal(err)
	}
	return name, host
}

// plainHTTPHosts is a hosts.toml saying host speaks plain HTTP, in the
// layout every containerd reads (1.6 refuses a file without [host]).
func plainHTTPHosts(host string) string {
	return fmt.Sprintf("server = %q\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+host, "http://"+host)
}

func findImage(t *testing.T, out agentcheck.Report, name, stdout string) (status, reason string) {
	t.Helper()
	for _, im := range out.Images {
		if im.Image == name {
			return im.Status.Word(), im.Reason
		}
	}
	t.Fatalf("image %s not in the report:\n%s", name, stdout)
	return "", ""
}

// TestNodeResolver: registry names resolve with the nameservers of the
// node's resolv.conf (--resolv-conf), not the agent's own.
func TestNodeResolver(t *testing.T) {
	l := lab.Need(t)
	name, _ := zoneImage(t, l)
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
			r := l.Agent(t, "check", "-o", "json", "--cri-endpoint", l.Containerd.Endpoint(), "--resolv-conf", rc, "--probe-timeout", "5s",
				"--containerd-config", l.Containerd.ConfigPath())
			status, reason := findImage(t, r.JSON(t), name, r.Stdout)
			t.Logf("%s with nameserver %s: %s %q", name, tt.nameserver, status, reason)
			if status != tt.status || !strings.Contains(reason, tt.reason) {
				t.Errorf("status %s %q, want %s containing %q", status, reason, tt.status, tt.reason)
			}
		})
	}
}

// forwardProxy is an HTTP proxy that counts the requests it forwards. It
// resolves names with the nameserver at dnsAddr, like a proxy on the
// node's network would.
func forwardProxy(t *testing.T, dnsAddr string) (addr string, hits *atomic.Int32) {
	t.Helper()
	hits = &atomic.Int32{}
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsAddr)
	}}
	transport := &http.Transport{DialContext: (&net.Dialer{Resolver: resolver}).DialContext}
	t.Cleanup(transport.CloseIdleConnections)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		out, err := http.NewRequestWithContext(r.Context(), r.Method, r.URL.String(), nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		out.Header = r.Header.Clone()
		out.Header.Del("Proxy-Authorization")
		resp, err := transport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), hits
}

// TestNodeNetworkPath: with --host-root, the agent takes the runtime's
// proxy from its systemd drop-in, the node's resolv.conf and the node's
// hosts.toml, all from the node's files; --proxy-from=none goes direct.
func TestNodeNetworkPath(t *testing.T) {
	l := lab.Need(t)
	name, host := zoneImage(t, l)
	proxyAddr, hits := forwardProxy(t, "127.0.0.153:53")

	root := t.TempDir()
	files := map[string]string{
		"etc/resolv.conf": "nameserver 127.0.0.153\n",
		"etc/systemd/system/containerd.service.d/http-proxy.conf": "[Service]\nEnvironment=\"HTTP_PROXY=http://" + proxyAddr + "\" \"NO_PROXY=example.internal\"\n",
		"etc/containerd/certs.d/" + host + "/hosts.toml":          plainHTTPHosts(host),
		// containerd 1.x reads host directories only with config_path set.
		"etc/containerd/config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
	}
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		proxyFrom string
		viaProxy  bool
	}{{"systemd", true}, {"none", false}} {
		t.Run("proxy-from="+tt.proxyFrom, func(t *testing.T) {
			before := hits.Load()
			r := l.Agent(t, "check", "-o", "json", "--cri-endpoint", l.Containerd.Endpoint(), "--host-root", root, "--proxy-from", tt.proxyFrom)
			status, reason := findImage(t, r.JSON(t), name, r.Stdout)
			stderr := r.Stderr
			proxied := hits.Load() - before
			t.Logf("%s: %s %q, %d requests through the proxy", name, status, reason, proxied)
			if status != "available" || (proxied > 0) != tt.viaProxy {
				t.Errorf("status %s, %d proxied requests; want available, via proxy %v\nstderr:\n%s", status, proxied, tt.viaProxy, stderr)
			}
			if tt.viaProxy && !strings.Contains(stderr, proxyAddr) {
				t.Errorf("the log does not say which proxy is used:\n%s", stderr)
			}
		})
	}
}
