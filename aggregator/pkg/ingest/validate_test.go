package ingest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/protobuf/proto"
)

func TestValidateAcceptsValidMessages(t *testing.T) {
	tests := []struct {
		name string
		msg  *pullwatchv1.AgentMessage
	}{
		{"empty snapshot", snapshot(1, "node-a")},
		{"snapshot with images", snapshot(1, "ip-10-0-0-1.eu-west-1.compute.internal", img("a:1"), img("b:1"))},
		{"update", update(2, "node-a", []*pullwatchv1.ImageReport{img("a:1")}, "b:1")},
		{"mirror endpoint", snapshot(1, "node-a", imgWith("a:1", func(im *pullwatchv1.ImageReport) {
			im.Endpoints[0].Role = pullwatchv1.EndpointRole_ENDPOINT_ROLE_MIRROR
		}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Validate(tt.msg); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestValidateNilParts(t *testing.T) {
	// Messages built in Go (not decoded) can hold nil elements; the
	// generated getters make them read as empty, which validation refuses.
	tests := []struct {
		name   string
		msg    *pullwatchv1.AgentMessage
		reason Reason
	}{
		{"nil message", nil, ReasonNoBody},
		{"nil image", snapshot(1, "node-a", nil), ReasonInvalidImage},
		{"nil endpoint", snapshot(1, "node-a", imgWith("a:1", func(im *pullwatchv1.ImageReport) {
			im.Endpoints = []*pullwatchv1.EndpointResult{nil}
		})), ReasonInvalidStatus},
		{"nil snapshot", &pullwatchv1.AgentMessage{Body: &pullwatchv1.AgentMessage_Snapshot{}}, ReasonInvalidNode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var verr *Error
			if err := Validate(tt.msg); !errors.As(err, &verr) || verr.Reason != tt.reason {
				t.Errorf("Validate = %v, want reason %s", err, tt.reason)
			}
		})
	}
}

// FuzzValidate decodes arbitrary bytes as an AgentMessage and validates
// it: validation must never panic, and every refusal must carry one of the
// fixed reasons (they are a metric label).
func FuzzValidate(f *testing.F) {
	seeds := []*pullwatchv1.AgentMessage{
		snapshot(1, "node-a", img("docker.io/library/nginx:1.27"), img("registry.example:5000/app@sha256:0123")),
		update(2, "node-a", []*pullwatchv1.ImageReport{img("a:1")}, "b:1"),
		snapshot(1, "Bad_Node", imgWith("a:1", func(im *pullwatchv1.ImageReport) { im.Status = 42 })),
	}
	for _, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, b []byte) {
		var msg pullwatchv1.AgentMessage
		if err := proto.Unmarshal(b, &msg); err != nil {
			return
		}
		err := Validate(&msg)
		if err == nil {
			return
		}
		var verr *Error
		if !errors.As(err, &verr) {
			t.Fatalf("Validate returned %T %v, want *Error", err, err)
		}
		if !slices.Contains(Reasons(), string(verr.Reason)) {
			t.Fatalf("reason %q is not in Reasons()", verr.Reason)
		}
	})
}

func TestScreenRefusesOneImageOnly(t *testing.T) {
	msg := snapshot(1, "node-a",
		img("ok:1"),
		imgWith("bad-utf8:1", func(im *pullwatchv1.ImageReport) { im.Reason = "status line \xff" }),
		imgWith("long:1", func(im *pullwatchv1.ImageReport) {
			im.Endpoints[0].RatelimitRemaining = strings.Repeat("9", maxShort+1)
		}),
		img("ok:1"), // listed twice: the second goes
	)
	refused, err := Screen(msg)
	if err != nil {
		t.Fatalf("Screen: %v", err)
	}
	var reasons []Reason
	for _, r := range refused {
		reasons = append(reasons, r.Reason)
	}
	if want := []Reason{ReasonInvalidUTF8, ReasonFieldTooLong, ReasonInvalidImage}; !slices.Equal(reasons, want) {
		t.Fatalf("refusals %v, want %v", reasons, want)
	}
	if err := Validate(msg); err != nil {
		t.Fatalf("the screened message does not validate: %v", err)
	}
	ims := msg.GetSnapshot().GetImages()
	if len(ims) != 3 {
		t.Fatalf("%d images after Screen, want 3", len(ims))
	}
	if ims[1].GetStatus() != pullwatchv1.ImageStatus_IMAGE_STATUS_UNKNOWN || !strings.Contains(ims[1].GetReason(), "invalid_utf8") {
		t.Errorf("refused image = %v, want unknown naming invalid_utf8", ims[1])
	}
}

func TestPlaceNames(t *testing.T) {
	img := place{base: "snapshot.images", i: 3, j: -1}
	for _, tt := range []struct {
		p    place
		want string
	}{
		{img, "snapshot.images[3]"},
		{img.leafed("status"), "snapshot.images[3].status"},
		{img.in("endpoints", 0).leafed("status"), "snapshot.images[3].endpoints[0].status"},
		{img.in("repo_digests", 2).leafed(""), "snapshot.images[3].repo_digests[2]"},
		{img.leafed("containers"), "snapshot.images[3].containers"},
		{place{base: "snapshot.node", i: -1, j: -1}.leafed("runtime.name"), "snapshot.node.runtime.name"},
		{place{base: "update.removed_images", i: 0, j: -1}, "update.removed_images[0]"},
	} {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%+v = %q, want %q", tt.p, got, tt.want)
		}
	}
}

// BenchmarkValidateSnapshot: validating a good snapshot of 100 images
// builds no field names.
func BenchmarkValidateSnapshot(b *testing.B) {
	snap := &pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: "node-a"}}
	for i := range 100 {
		snap.Images = append(snap.Images, &pullwatchv1.ImageReport{
			Image: fmt.Sprintf("registry.example/app-%d:v1", i), Status: pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE,
			Endpoints: []*pullwatchv1.EndpointResult{{Url: "https://registry.example/v2", Role: pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM,
				Status: pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE}},
			Containers: []*pullwatchv1.ContainerRef{{Namespace: "ns", Pod: "pod", Container: "app"}},
		})
	}
	msg := &pullwatchv1.AgentMessage{Sequence: 1, Body: &pullwatchv1.AgentMessage_Snapshot{Snapshot: snap}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Screen(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// A registry is a host[:port]: it is a map key and a metric label in the
// planner, so a node must not put anything else there.
func TestValidateRegistry(t *testing.T) {
	good := []string{"", "docker.io", "registry-1.docker.io", "reg:5000", "localhost", "localhost:5000", "10.0.0.1:443", "[::1]:5000", "Registry.Example"}
	for _, r := range good {
		if err := Validate(snapshot(1, "node-a", imgWith("a:1", func(im *pullwatchv1.ImageReport) { im.Registry = r }))); err != nil {
			t.Errorf("registry %q: %v", r, err)
		}
	}
	bad := []string{"docker.io/library", "https://docker.io", "reg:port", "reg:0", "reg:70000", "a b", "-bad.example", "bad-.example", "a..b", ".a", "a.", "reg:", ":5000",
		"[::1", "x\x00y", strings.Repeat("a", 64) + ".example", "reg:5000:1"}
	for _, r := range bad {
		err := Validate(snapshot(1, "node-a", imgWith("a:1", func(im *pullwatchv1.ImageReport) { im.Registry = r })))
		var verr *Error
		if !errors.As(err, &verr) || verr.Reason != ReasonInvalidRegistry {
			t.Errorf("registry %q: %v, want reason %s", r, err, ReasonInvalidRegistry)
		}
	}
	if !slices.Contains(Reasons(), string(ReasonInvalidRegistry)) {
		t.Errorf("Reasons() lacks %s", ReasonInvalidRegistry)
	}
}
