package hostile_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/agent/pkg/probe"
	"github.com/pullwatch/pullwatch/agent/pkg/report"
	"github.com/pullwatch/pullwatch/aggregator/pkg/ingest"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// pipeRegistry is a registry that answers /v2/ with a bearer challenge
// for realm (200 when realm is empty) and every other request (token,
// manifest HEAD, index GET) with answer, raw bytes, then hangs up. It is
// reached through a transport that dials it over net.Pipe whatever the
// address, so the fuzzer runs at memory speed.
func pipeRegistry(realm string, answer []byte) *http.Transport {
	t := &http.Transport{}
	t.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		client, server := net.Pipe()
		go func() {
			defer server.Close()
			req, err := http.ReadRequest(bufio.NewReader(server))
			if err != nil {
				return
			}
			switch {
			case req.URL.Path == "/v2/" && realm != "":
				_, err = io.WriteString(server, "HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Bearer realm=\""+realm+"\",service=\"fuzz\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			case req.URL.Path == "/v2/":
				_, err = io.WriteString(server, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			default:
				_, err = server.Write(answer)
			}
			_ = err
		}()
		return client, nil
	}
	t.DisableKeepAlives = true
	t.MaxResponseHeaderBytes = 64 << 10
	return t
}

// FuzzRegistryAnswer drives arbitrary registry answers (status line,
// headers, body, token realm) through the prober, the node's report and
// its wire snapshot into the aggregator's Validate, which must accept
// every one: no registry can make the agent's report unencodable or get
// it refused.
func FuzzRegistryAnswer(f *testing.F) {
	f.Add("HTTP/1.1 200 OK", "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", []byte{}, "", false)
	f.Add("HTTP/1.1 429 \xff\xfe", "Retry-After: "+strings.Repeat("9", 5000)+"\r\nRatelimit-Remaining: \xc3\x28", []byte{}, "", false)
	f.Add("HTTP/1.1 "+strings.Repeat("5", 2022), "Docker-Content-Digest: sha256:"+strings.Repeat("a", 293), []byte("x"), "", true)
	f.Add("HTTP/1.1 200 OK", "Content-Type: application/json", []byte(`{"token":"t","expires_in":60}`), "http://user:pass@realm.example/token", false)
	f.Add("HTTP/1.1 401 Unauthorized", "Www-Authenticate: Bearer realm=\"http://127.0.0.1/internal\"", []byte{}, "http://127.0.0.1:1/internal/\xff", true)
	f.Add("HTTP/1.1 200 OK", "Content-Type: application/vnd.oci.image.index.v1+json\r\nDocker-Content-Digest: sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\r\nContent-Length: 2", []byte("{}"), "", false)
	f.Fuzz(func(t *testing.T, status, headers string, body []byte, realm string, pinned bool) {
		answer := []byte(status + "\r\n" + headers + "\r\nConnection: close\r\n\r\n")
		answer = append(answer, body...)
		p := probe.New(probe.Options{Timeout: time.Second, Transport: pipeRegistry(realm, answer)})
		name := "registry.fuzz:5000/app:v1"
		if pinned {
			name = "registry.fuzz:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
		}
		ref, err := imageref.Parse(name)
		if err != nil {
			t.Fatal(err)
		}
		eps := []hosts.Endpoint{
			{URL: "https://user:s3cret@mirror.fuzz/v2", Role: hosts.RoleMirror, Host: "registry.fuzz:5000"},
			{URL: "http://registry.fuzz:5000/v2", Role: hosts.RoleUpstream, Host: "registry.fuzz:5000"},
		}
		res := p.Probe(context.Background(), probe.Request{Ref: ref, Endpoints: eps, NodeDigest: "sha256:0000000000000000000000000000000000000000000000000000000000000000", Round: probe.NewRound(4)})
		node := report.Node{Node: "node-fuzz", ObservedAt: time.Now(), Images: []report.Image{{
			Image: ref.String(), Registry: ref.Registry(), InUse: true, Outcome: res.Outcome, Pods: []report.Pod{},
		}}}
		node.Images[0].Drifted, node.Images[0].RegistryDigest = res.Digest != "", res.Digest
		if _, err := json.Marshal(node.Sanitized()); err != nil {
			t.Fatalf("check -o json cannot print it: %v", err)
		}
		b, err := proto.Marshal(&pb.AgentMessage{Sequence: 1, Body: &pb.AgentMessage_Snapshot{Snapshot: node.Snapshot("fuzz", time.Minute)}})
		if err != nil {
			t.Fatalf("the snapshot does not encode: %v", err)
		}
		var msg pb.AgentMessage
		if err := proto.Unmarshal(b, &msg); err != nil {
			t.Fatalf("the snapshot does not decode: %v", err)
		}
		if err := ingest.Validate(&msg); err != nil {
			t.Fatalf("the aggregator refuses the report: %v\nstatus %s reason %q", err, res.Status.Word(), res.Reason)
		}
		for _, ep := range msg.GetSnapshot().GetImages()[0].GetEndpoints() {
			if strings.Contains(ep.GetUrl(), "s3cret") || strings.Contains(ep.GetReason(), "s3cret") {
				t.Fatalf("userinfo in the report: %v", ep)
			}
		}
	})
}
