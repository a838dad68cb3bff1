package analyzer

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/pullwatch/pullwatch/aggregator/pkg/diagnose"
	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

const (
	available   = pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE
	absent      = pullwatchv1.ImageStatus_IMAGE_STATUS_ABSENT
	unreachable = pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE
	upstream    = pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM
	upURL       = "https://registry.example"
)

// The endpoint results the tests combine (as in diagnose's tests).
var (
	upOK     = &pullwatchv1.EndpointResult{Url: upURL, Role: upstream, Status: available, HttpStatus: 200, Latency: durationpb.New(20 * time.Millisecond)}
	upAbsent = &pullwatchv1.EndpointResult{Url: upURL, Role: upstream, Status: absent, HttpStatus: 404}
	upDown   = &pullwatchv1.EndpointResult{Url: upURL, Role: upstream, Status: unreachable, Reason: "dial tcp: connection refused", Latency: durationpb.New(2 * time.Second)}
)

func image(ref string, st pullwatchv1.ImageStatus, eps ...*pullwatchv1.EndpointResult) *pullwatchv1.ImageReport {
	return &pullwatchv1.ImageReport{Image: ref, Registry: "registry.example", Status: st, Reason: st.Word(), InUse: true, Endpoints: eps}
}

// fakeDirectory is the Kubernetes API's view of nodes.
type fakeDirectory struct {
	synced bool
	zones  map[string]string // node -> zone; present means the Node exists
}

func (d fakeDirectory) Node(name string) (string, bool, bool) {
	z, ok := d.zones[name]
	return z, ok, d.synced
}

func TestInputs(t *testing.T) {
	views := []state.NodeView{
		{Name: "a", Info: &pullwatchv1.Node{Name: "a", Labels: map[string]string{diagnose.ZoneLabel: "agent-zone"}}},
		{Name: "b", Info: &pullwatchv1.Node{Name: "b", Labels: map[string]string{diagnose.ZoneLabel: "agent-zone"}}, Stale: true},
		{Name: "gone", Info: &pullwatchv1.Node{Name: "gone"}},
	}
	tests := []struct {
		name string
		dir  Directory
		want []diagnose.Node // Name, Zone, Stale, Unregistered only
	}{
		{"no API: zones from the agents, nothing unregistered", nil, []diagnose.Node{
			{Name: "a", Zone: "agent-zone"}, {Name: "b", Zone: "agent-zone", Stale: true}, {Name: "gone"},
		}},
		{"API not synced yet: as without it", fakeDirectory{synced: false}, []diagnose.Node{
			{Name: "a", Zone: "agent-zone"}, {Name: "b", Zone: "agent-zone", Stale: true}, {Name: "gone"},
		}},
		{"API: its zones win, unknown nodes are unregistered", fakeDirectory{synced: true, zones: map[string]string{"a": "api-zone", "b": ""}}, []diagnose.Node{
			{Name: "a", Zone: "api-zone"}, {Name: "b", Zone: "agent-zone", Stale: true}, {Name: "gone", Unregistered: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Inputs(views, tt.dir, nil)
			for i := range got {
				got[i].Images = nil
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d nodes, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if got[i].Name != tt.want[i].Name || got[i].Zone != tt.want[i].Zone || got[i].Stale != tt.want[i].Stale || got[i].Unregistered != tt.want[i].Unregistered {
					t.Errorf("node %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestAnalyzerLogsChanges(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	store := state.New(3*time.Minute, state.WithClock(func() time.Time { return now }))
	snapshot := func(name string, images ...*pullwatchv1.ImageReport) {
		store.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: name}, Images: images})
	}
	var logs bytes.Buffer
	a := NewAnalyzer(store, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()

	steps := []struct {
		name   string
		change func()
		want   []string // substrings, one per expected log line, in order
	}{
		{"healthy: nothing to say", func() {
			snapshot("a", image("registry.example/app:1", available, upOK))
			snapshot("b", image("registry.example/app:1", available, upOK))
		}, nil},
		{"b loses the registry", func() {
			snapshot("b", image("registry.example/app:1", unreachable, upDown))
		}, []string{
			`level=WARN msg="diagnosis changed" from=none to=node registry=registry.example endpoint=https://registry.example role=upstream failing_nodes=1 of_nodes=2 nodes=b`,
			`level=WARN msg="diagnosis changed" from=none to=node image=registry.example/app:1 registry=registry.example status=unreachable failing_nodes=1 nodes=b`,
		}},
		{"unchanged: no new line", func() {}, nil},
		{"a too: cluster", func() {
			snapshot("a", image("registry.example/app:1", unreachable, upDown))
		}, []string{
			`from=node to=cluster registry=registry.example endpoint=https://registry.example`,
			`from=node to=cluster image=registry.example/app:1`,
		}},
		{"b goes stale: a alone is still everything live", func() {
			now = now.Add(2 * time.Minute)
			snapshot("a", image("registry.example/app:1", unreachable, upDown))
			now = now.Add(2 * time.Minute)
		}, nil},
		{"recovered", func() {
			snapshot("a", image("registry.example/app:1", available, upOK))
			snapshot("b", image("registry.example/app:1", available, upOK))
		}, []string{
			`level=INFO msg="diagnosis changed" from=cluster to=none registry=registry.example`,
			`level=INFO msg="diagnosis changed" from=cluster to=none image=registry.example/app:1`,
		}},
		{"a failing image goes away", func() {
			// Two nodes' answers: one node's alone makes no image scope.
			snapshot("a", image("registry.example/gone:1", absent, upAbsent))
			snapshot("b", image("registry.example/gone:1", absent, upAbsent))
			a.Analyze(ctx)
			logs.Reset()
			snapshot("a")
			snapshot("b")
		}, []string{
			`from=image to=none why="no live node reports it" image=registry.example/gone:1`,
		}},
	}
	for _, st := range steps {
		logs.Reset()
		st.change()
		a.Analyze(ctx)
		lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
		if logs.Len() == 0 {
			lines = nil
		}
		if len(lines) != len(st.want) {
			t.Errorf("%s: %d log lines, want %d:\n%s", st.name, len(lines), len(st.want), logs.String())
			continue
		}
		for i, w := range st.want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("%s: line %d = %s\nwant it to contain %s", st.name, i, lines[i], w)
			}
		}
	}
}
