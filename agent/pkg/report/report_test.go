package report

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func sample() Node {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	return Node{Node: "n1", Runtime: Runtime{Name: "containerd", Version: "2.0.1", APIVersion: "v1", Endpoint: "unix:///run/containerd/containerd.sock"},
		Platform: ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, Labels: map[string]string{"zone": "a"}, ObservedAt: at,
		Images: []Image{
			{Image: "r.example/app:v1", Registry: "r.example", Digest: "sha256:1", ImageID: "sha256:i", RepoDigests: []string{"r.example/app@sha256:1"}, InUse: true,
				Outcome: Outcome{Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE, Reason: "manifest found at x; y failed: z", CheckedAt: &at, Degraded: true, Drifted: true, RegistryDigest: "sha256:2", CredentialSource: "pull_secret",
					Endpoints: []Endpoint{
						{URL: "https://m/v2", Role: pb.EndpointRole_ENDPOINT_ROLE_MIRROR, Status: pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, Reason: "dial", LatencySeconds: 0.25, CheckedAt: at},
						{URL: "https://r.example/v2", Role: pb.EndpointRole_ENDPOINT_ROLE_UPSTREAM, Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE, LatencySeconds: 0.5, HTTPStatus: 200, CheckedAt: at, Skipped: true, RateLimitRemaining: "5;w=60"},
					}},
				Pods: []Pod{{Namespace: "shop", Pod: "web", PodUID: "u", Container: "app", ContainerID: "c", State: "CONTAINER_RUNNING"}, {Namespace: "x", Pod: "y", Container: "z"}}},
			{Image: "sha256:ghost", Outcome: Outcome{Status: pb.ImageStatus_IMAGE_STATUS_UNKNOWN, Reason: "no name", Endpoints: []Endpoint{}}, Pods: []Pod{}},
		}}
}

// The JSON of `check -o json` is a contract: testdata/node.json is what
// the agent printed when statuses were still strings in this package.
func TestJSONContract(t *testing.T) {
	want, err := os.ReadFile("testdata/node.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.MarshalIndent(sample(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != strings.TrimSpace(string(want)) {
		t.Errorf("JSON changed:\n%s\nwant:\n%s", got, want)
	}
	var back Node
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, sample()) {
		t.Errorf("round trip: %+v", back)
	}
	if b, _ := json.Marshal(Node{}); string(b) != `{"node":"","runtime":{"name":"","version":""},"platform":{"architecture":"","os":""},"observed_at":"0001-01-01T00:00:00Z","images":null}` {
		t.Errorf("empty node: %s", b)
	}
}

func TestSnapshot(t *testing.T) {
	s := sample().Snapshot("v1.2.3", time.Minute)
	im := s.GetImages()[0]
	if s.GetNode().GetRuntime().GetApiVersion() != "v1" || s.GetNode().GetVariant() != "v7" || im.GetStatus() != pb.ImageStatus_IMAGE_STATUS_AVAILABLE ||
		im.GetEndpoints()[0].GetRole() != pb.EndpointRole_ENDPOINT_ROLE_MIRROR || im.GetEndpoints()[0].GetStatus() != pb.ImageStatus_IMAGE_STATUS_UNREACHABLE ||
		im.GetEndpoints()[0].GetLatency().AsDuration() != 250*time.Millisecond || im.GetContainers()[0].GetState() != "CONTAINER_RUNNING" || !im.GetDrifted() {
		t.Errorf("snapshot: %v", s)
	}
	if s.GetImages()[1].GetCheckedAt() != nil {
		t.Error("an unchecked image got a checked_at")
	}
}

func TestTable(t *testing.T) {
	var buf bytes.Buffer
	if err := sample().WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"available (degraded) (drifted)", "mirror unreachable 250ms; upstream available 500ms", "shop/web,x/y", "2 images: 1 available, 1 not available"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "sha256:ghost") > strings.Index(out, "r.example/app:v1") {
		t.Errorf("failing images not first:\n%s", out)
	}
	if sample().AllAvailable() || sample().NotAvailable() != 1 {
		t.Error("AllAvailable/Failing wrong")
	}
}
