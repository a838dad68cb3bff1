package round

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pullwatch/pullwatch/agent/pkg/cri"
	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
	"github.com/pullwatch/pullwatch/agent/pkg/probe"
	"github.com/pullwatch/pullwatch/agent/pkg/report"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// reachingProber is a fakeProber that also answers Reach.
type reachingProber struct {
	*fakeProber
	reach bool
}

func (r reachingProber) Reach(context.Context, *probe.Round, imageref.Ref, []hosts.Endpoint) bool {
	return r.reach
}

func TestPlanDelegatesAndBudgets(t *testing.T) {
	inv := &cri.Inventory{
		Runtime: cri.Runtime{Name: "containerd"},
		Images:  []cri.Image{{ID: idA, RepoTags: []string{"r.example/app:v1"}}},
	}
	ok := probe.Result{Outcome: report.Outcome{Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE, CredentialSource: "anonymous",
		Endpoints: []report.Endpoint{{URL: "https://r.example/v2", Status: pb.ImageStatus_IMAGE_STATUS_AVAILABLE}}}}
	fp := &fakeProber{res: map[string]probe.Result{"r.example/app:v1": ok}}
	rp := reachingProber{fakeProber: fp, reach: true}
	plan := NewPlan(0, 1)
	c := &Checker{NodeName: "n1", Runtime: fakeRuntime{inv}, Resolver: hosts.Defaults{}, Prober: rp, Plan: plan}
	run := func() report.Image {
		t.Helper()
		n, err := c.Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return n.Images[0]
	}
	// Delegated before the first check: the image is checked anyway.
	key := &pb.ProbeKey{Image: "r.example/app:v1", CredentialSource: "anonymous", Endpoints: []string{"https://r.example/v2"}}
	plan.Apply(&pb.ProbeAssignments{Delegated: []*pb.ProbeKey{key}}, time.Minute)
	if im := run(); im.Delegated || len(fp.seen) != 1 {
		t.Fatalf("first round: delegated %v, %d probes; want a probe", im.Delegated, len(fp.seen))
	}
	// Then another node HEADs it: no probe, the report says delegated.
	if im := run(); !im.Delegated || len(fp.seen) != 1 || im.Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
		t.Fatalf("delegated round: %+v, %d probes", im, len(fp.seen))
	}
	// A node that cannot reach the registry checks the image itself.
	c.Prober = reachingProber{fakeProber: fp, reach: false}
	if im := run(); im.Delegated || len(fp.seen) != 2 {
		t.Fatalf("unreachable: delegated %v, %d probes", im.Delegated, len(fp.seen))
	}
	// Without the stream, the plan does not count.
	plan.SetActive(func() bool { return false })
	c.Prober = rp
	if im := run(); im.Delegated || len(fp.seen) != 3 {
		t.Fatalf("no aggregator: delegated %v, %d probes", im.Delegated, len(fp.seen))
	}
	plan.SetActive(nil)
	// A cluster-wide hold: the last result, no probe.
	plan.Apply(&pb.ProbeAssignments{Budgets: []*pb.RegistryBudget{{Host: "r.example", HoldUntil: timestamppb.New(time.Now().Add(time.Hour))}}}, time.Minute)
	if im := run(); im.Delegated || len(fp.seen) != 3 || im.Status != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
		t.Fatalf("held: %+v, %d probes", im, len(fp.seen))
	}
	// A share of one HEAD per interval: one probe, then the last result.
	plan.Apply(&pb.ProbeAssignments{Budgets: []*pb.RegistryBudget{{Host: "r.example", RequestsPerInterval: 1}}, Phase: durationpb.New(7 * time.Second)}, time.Minute)
	run()
	run()
	if len(fp.seen) != 4 {
		t.Fatalf("budget of 1 per interval: %d probes after two rounds, want 4 in all", len(fp.seen))
	}
	// The phase places the next round.
	now := time.Unix(600, 0) // a multiple of the minute
	if got := plan.NextRound(now, time.Minute); got != 7*time.Second {
		t.Errorf("next round in %v, want 7s", got)
	}
	if got := plan.NextRound(now.Add(8*time.Second), time.Minute); got != 59*time.Second {
		t.Errorf("next round in %v, want 59s", got)
	}
	plan.Apply(nil, time.Minute)
	if got := plan.NextRound(now, time.Minute); got > time.Minute || got < 54*time.Second {
		t.Errorf("jittered next round in %v", got)
	}
}
