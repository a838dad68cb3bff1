package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// Scenario is the lab node in a known state for the aggregator tests:
// a pod whose three containers use an image the registry serves (ok), one
// whose manifest was deleted since (gone: absent), and one from a second
// registry that was stopped since (dead: unreachable); an aggregator, and
// the real agent reporting the node as node.
type Scenario struct {
	Node               string
	Namespace, Pod     string
	OK, Gone, Dead     string // image references
	DeadRegistry       string // host:port of the stopped registry
	GRPCAddr, HTTPAddr string
	Agg, Agent         *proc.Process
	lab                *Lab
}

// StartScenario sets the scenario up under the names prefix/... and
// waits until the aggregator's /metrics shows all three statuses. The
// aggregator gets aggArgs; the agent runs as node, every 2s.
func (l *Lab) StartScenario(t testing.TB, prefix, node string, aggArgs ...string) *Scenario {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := &Scenario{Node: node, Namespace: prefix, Pod: prefix + "-pod", lab: l}

	// The second registry, stopped once the image is on the node.
	deadReg, err := registry.Start(ctx, filepath.Join(t.TempDir(), "dead-registry"), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deadReg.Stop() })
	s.DeadRegistry = deadReg.Addr()

	if _, err := registry.PushSleeper(ctx, l.Reg, prefix+"/ok", "v1"); err != nil {
		t.Fatal(err)
	}
	goneDigest, err := registry.PushSleeper(ctx, l.Reg, prefix+"/gone", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registry.PushSleeper(ctx, deadReg, prefix+"/dead", "v1"); err != nil {
		t.Fatal(err)
	}
	s.OK, s.Gone, s.Dead = l.Reg.Ref(prefix+"/ok", "v1"), l.Reg.Ref(prefix+"/gone", "v1"), deadReg.Ref(prefix+"/dead", "v1")
	for _, ref := range []string{s.OK, s.Gone, s.Dead} {
		if _, err := l.Containerd.PullImage(ctx, ref, nil); err != nil {
			t.Fatal(err)
		}
	}
	sandbox, err := l.Containerd.RunPod(ctx, containerd.PodSpec{
		Namespace: s.Namespace, Name: s.Pod,
		Containers: []containerd.ContainerSpec{{Name: "ok", Image: s.OK}, {Name: "gone", Image: s.Gone}, {Name: "dead", Image: s.Dead}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.Containerd.RemovePod(ctx, sandbox); err != nil {
			t.Logf("remove pod %s/%s: %v", s.Namespace, s.Pod, err)
		}
	})
	if err := registry.DeleteManifest(ctx, l.Reg, prefix+"/gone", goneDigest); err != nil {
		t.Fatal(err)
	}
	if err := deadReg.Stop(); err != nil {
		t.Fatal(err)
	}

	s.GRPCAddr, s.HTTPAddr, s.Agg = l.StartAggregator(t, aggArgs...)
	s.Agent = l.StartAgent(t, s.GRPCAddr, []string{"NODE_NAME=" + node}, "--interval", "2s")

	want := []string{
		fmt.Sprintf(`pullwatch_node_image_status{image=%q,node=%q,status="available"} 1`, s.OK, node),
		fmt.Sprintf(`pullwatch_node_image_status{image=%q,node=%q,status="absent"} 1`, s.Gone, node),
		fmt.Sprintf(`pullwatch_node_image_status{image=%q,node=%q,status="unreachable"} 1`, s.Dead, node),
	}
	WaitFor(t, 60*time.Second, "the scenario's statuses on /metrics", func() (bool, string) {
		_, body := HTTPGet(s.MetricsURL())
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false, "missing " + w + "\n" + GrepLines(body, "pullwatch_node_image_status")
			}
		}
		return true, ""
	}, s.Agent, s.Agg)
	return s
}

func (s *Scenario) MetricsURL() string { return "http://" + s.HTTPAddr + "/metrics" }
func (s *Scenario) PageURL() string    { return "http://" + s.HTTPAddr + "/" }

// ReportSnapshot reports snap to the aggregator at grpcAddr over the
// real ReportService, as an agent's first message, and waits for its ack.
// Tests use it for nodes the lab has no containerd for.
func ReportSnapshot(t testing.TB, grpcAddr string, snap *pullwatchv1.NodeSnapshot) {
	t.Helper()
	if err := SendSnapshot(grpcAddr, snap); err != nil {
		t.Fatal(err)
	}
}

// SendSnapshot is ReportSnapshot returning how the aggregator answered:
// nil for an ack, else the stream's error (a refusal's gRPC status).
func SendSnapshot(grpcAddr string, snap *pullwatchv1.NodeSnapshot) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := pullwatchv1.NewReportServiceClient(conn).Report(ctx)
	if err != nil {
		return fmt.Errorf("open report stream to %s: %w", grpcAddr, err)
	}
	if snap.ObservedAt == nil {
		snap.ObservedAt = timestamppb.Now()
	}
	if snap.Interval == nil {
		snap.Interval = durationpb.New(time.Minute)
	}
	if err := stream.Send(&pullwatchv1.AgentMessage{Sequence: 1, Body: &pullwatchv1.AgentMessage_Snapshot{Snapshot: snap}}); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("send snapshot of %s: %w", snap.GetNode().GetName(), err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("ack for the snapshot of %s: %w", snap.GetNode().GetName(), err)
	}
	if ack := resp.GetAck(); ack == nil || ack.GetSequence() != 1 {
		return fmt.Errorf("answer to the snapshot of %s: %v, want ack 1", snap.GetNode().GetName(), resp)
	}
	_ = stream.CloseSend()
	return nil
}

// endpointURLs returns the endpoint URL the real agent reports for each
// registry host (from pullwatch_node_endpoint_up of its node).
func (s *Scenario) endpointURLs(t testing.TB) map[string]string {
	t.Helper()
	_, body := HTTPGet(s.MetricsURL())
	re := regexp.MustCompile(`^pullwatch_node_endpoint_up\{endpoint="([^"]+)",node="([^"]+)",registry="([^"]+)",role="upstream"\}`)
	out := map[string]string{}
	for _, line := range strings.Split(body, "\n") {
		if m := re.FindStringSubmatch(line); m != nil && m[2] == s.Node {
			out[m[3]] = m[1]
		}
	}
	return out
}

// SyntheticNode is a snapshot of another node that runs the scenario's
// images. It reaches the lab registry (ok available, gone absent) and,
// when deadUp, the stopped registry too (dead available, as from a node
// with another network path); otherwise dead is unreachable as on the lab
// node. zone, when set, is sent as the agent's zone label. The endpoint
// URLs are those the real agent reports.
func (s *Scenario) SyntheticNode(t testing.TB, name, zone string, deadUp bool) *pullwatchv1.NodeSnapshot {
	t.Helper()
	l := s.lab
	now := timestamppb.Now()
	urls := s.endpointURLs(t)
	labURL, deadURL := urls[l.Reg.Addr()], urls[s.DeadRegistry]
	if labURL == "" || deadURL == "" {
		t.Fatalf("the agent reports no upstream endpoint for %s or %s: %v", l.Reg.Addr(), s.DeadRegistry, urls)
	}
	img := func(ref, registry, url string, st pullwatchv1.ImageStatus, code int32, container string) *pullwatchv1.ImageReport {
		reason := "manifest found at " + url
		switch st {
		case pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT:
			reason = "manifest unknown"
		case pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE:
			reason = "dial tcp " + registry + ": connect: connection refused"
		}
		return &pullwatchv1.ImageReport{
			Image: ref, Registry: registry, Status: st, InUse: true, CheckedAt: now, Reason: reason,
			Endpoints: []*pullwatchv1.EndpointResult{{Url: url, Role: pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM, Status: st, HttpStatus: code,
				Latency: durationpb.New(3 * time.Millisecond), CheckedAt: now}},
			Containers: []*pullwatchv1.ContainerRef{{Namespace: s.Namespace, Pod: s.Pod + "-" + name, Container: container, State: "running"}},
		}
	}
	dead := img(s.Dead, s.DeadRegistry, deadURL, pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE, 200, "dead")
	if !deadUp {
		dead = img(s.Dead, s.DeadRegistry, deadURL, pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE, 0, "dead")
	}
	n := &pullwatchv1.Node{Name: name, AgentVersion: "e2e", Runtime: &pullwatchv1.Runtime{Name: "containerd", Version: "1.6.20"}}
	if zone != "" {
		n.Labels = map[string]string{"topology.kubernetes.io/zone": zone}
	}
	return &pullwatchv1.NodeSnapshot{
		Node: n,
		Images: []*pullwatchv1.ImageReport{
			img(s.OK, l.Reg.Addr(), labURL, pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE, 200, "ok"),
			img(s.Gone, l.Reg.Addr(), labURL, pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT, 404, "gone"),
			dead,
		},
	}
}
