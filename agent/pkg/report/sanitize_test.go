package report

import (
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

func TestSanitized(t *testing.T) {
	eps := make([]Endpoint, 40)
	for i := range eps {
		eps[i] = Endpoint{URL: "https://user:s3cret@mirror.example/v2", Role: pb.EndpointRole_ENDPOINT_ROLE_MIRROR, Status: pb.ImageStatus_IMAGE_STATUS_UNREACHABLE,
			Reason: "Get \"https://user:s3cret@mirror.example/v2/\": status \xff" + strings.Repeat("x", 5000), RateLimitRemaining: strings.Repeat("9", 4<<20)}
	}
	n := Node{Node: "node-a", Images: []Image{{
		Image: "r.example/a:1",
		Outcome: Outcome{Status: pb.ImageStatus_IMAGE_STATUS_UNREACHABLE, Reason: "HTTP/1.1 200 \xff\xfe" + strings.Repeat("y", 2022),
			Drifted: true, RegistryDigest: "sha256:" + strings.Repeat("a", 300), Endpoints: eps},
	}}}
	s := n.Sanitized()
	im := s.Images[0]
	if len(im.Endpoints) != pb.MaxEndpoints {
		t.Errorf("%d endpoints, want %d", len(im.Endpoints), pb.MaxEndpoints)
	}
	if im.RegistryDigest != "" || im.Drifted {
		t.Errorf("a digest too long to be one kept: %q drifted=%v", im.RegistryDigest, im.Drifted)
	}
	for _, str := range []string{im.Reason, im.Endpoints[0].URL, im.Endpoints[0].Reason, im.Endpoints[0].RateLimitRemaining} {
		if !utf8.ValidString(str) || strings.Contains(str, "s3cret") || len(str) > pb.MaxReason {
			t.Errorf("not sanitized: %.120q (%d bytes)", str, len(str))
		}
	}
	if got := im.Endpoints[0].URL; got != "https://mirror.example/v2" {
		t.Errorf("URL = %q", got)
	}
	if !strings.Contains(n.Images[0].Endpoints[0].URL, "s3cret") {
		t.Error("Sanitized changed its receiver")
	}
	if _, err := proto.Marshal(n.Snapshot("v1", 0)); err != nil {
		t.Errorf("the snapshot does not encode: %v", err)
	}
}
