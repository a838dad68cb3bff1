package shard

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// sixNodes is the reproduction: six nodes with one image, k=2, so
// two nodes probe and four delegate. It returns the probers and the
// delegating nodes, each of which has reported the image delegated.
func sixNodes(t *testing.T, p *Planner, s store, ref string) (probers, delegating []string) {
	t.Helper()
	names := []string{"n1", "n2", "n3", "n4", "n5", "n6"}
	for _, n := range names {
		ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)}
		p.Ingest(n, node(n, ""), true, ims, nil, s.apply(n, ims))
	}
	for _, n := range names {
		d := p.DirectiveSince(n, "")
		switch {
		case len(d.GetAssigned()) == 1:
			probers = append(probers, n)
		case len(d.GetDelegated()) == 1:
			delegating = append(delegating, n)
		default:
			t.Fatalf("%s: plan %v", n, d)
		}
	}
	if len(probers) != 2 || len(delegating) != 4 {
		t.Fatalf("probers %v, delegating %v; want 2 and 4", probers, delegating)
	}
	for _, n := range delegating {
		ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)}
		p.Ingest(n, nil, true, ims, nil, s.apply(n, ims))
	}
	return probers, delegating
}

// A node that is not one of the key's chosen probers cannot write the
// other nodes' result: its own "check" is its own.
func TestPlannerIgnoresAnswersOfNodesNotChosen(t *testing.T) {
	s := store{}
	p := New(Options{Replicas: 2, Sink: s})
	const ref = "reg:5000/app:v1"
	probers, delegating := sixNodes(t, p, s, ref)
	for _, n := range probers {
		ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)}
		p.Ingest(n, nil, true, ims, nil, s.apply(n, ims))
	}
	attacker, victim := delegating[0], delegating[1]
	forged := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_ABSENT, false)}
	p.Ingest(attacker, nil, true, forged, nil, s.apply(attacker, forged))
	if got := s[victim][ref].GetStatus(); got != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
		t.Errorf("%s's image after %s (no prober) said absent: %v, want available", victim, attacker, got)
	}
	if got := s[victim][ref].GetSharedFrom(); got == attacker {
		t.Errorf("%s's image is shared from %s, which is no prober", victim, attacker)
	}
	// The victim reporting again is folded with the probers' answer, not
	// the attacker's.
	ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)}
	p.Ingest(victim, nil, true, ims, nil, s.apply(victim, ims))
	if got := s[victim][ref]; got.GetStatus() != pb.ImageStatus_IMAGE_STATUS_AVAILABLE || !slices.Contains(probers, got.GetSharedFrom()) {
		t.Errorf("re-reported: %v shared from %q, want available from one of %v", got.GetStatus(), got.GetSharedFrom(), probers)
	}
	// The attacker's own view is its own.
	if got := s[attacker][ref].GetStatus(); got != pb.ImageStatus_IMAGE_STATUS_ABSENT {
		t.Errorf("attacker's own image: %v", got)
	}
}

// When the chosen probers disagree, nobody's answer is shared, and every
// node checks the key itself until they agree again.
func TestPlannerProbersDisagree(t *testing.T) {
	s := store{}
	p := New(Options{Replicas: 2, Sink: s})
	const ref = "reg:5000/app:v1"
	probers, delegating := sixNodes(t, p, s, ref)
	honest, liar := probers[0], probers[1]
	ok := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)}
	p.Ingest(honest, nil, true, ok, nil, s.apply(honest, ok))
	// One prober alone is not enough to share a new answer: its absent
	// must not reach anyone while the other has not said the same.
	lie := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_ABSENT, false)}
	p.Ingest(liar, nil, true, lie, nil, s.apply(liar, lie))
	for _, n := range delegating {
		if got := s[n][ref].GetStatus(); got != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
			t.Errorf("%s: %v after the probers disagreed, want its own available", n, got)
		}
		d := p.DirectiveSince(n, "")
		if len(d.GetAssigned()) != 1 || len(d.GetDelegated()) != 0 {
			t.Errorf("%s: plan %v while the probers disagree, want the key assigned to it", n, d)
		}
	}
	// A delegated report arriving now is not folded with anything.
	ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)}
	p.Ingest(delegating[0], nil, true, ims, nil, s.apply(delegating[0], ims))
	if got := s[delegating[0]][ref]; got.GetStatus() != pb.ImageStatus_IMAGE_STATUS_AVAILABLE || got.GetSharedFrom() != "" {
		t.Errorf("delegated report while split: %v shared from %q", got.GetStatus(), got.GetSharedFrom())
	}
	// They agree again: the key is delegated again.
	p.Ingest(liar, nil, true, ok, nil, s.apply(liar, ok))
	for _, n := range delegating {
		if d := p.DirectiveSince(n, ""); len(d.GetDelegated()) != 1 {
			t.Errorf("%s: plan %v after the probers agree, want the key delegated", n, d)
		}
	}
	// Both say absent: shared.
	gone := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_ABSENT, false)}
	p.Ingest(honest, nil, true, gone, nil, s.apply(honest, gone))
	if got := s[delegating[1]][ref].GetStatus(); got != pb.ImageStatus_IMAGE_STATUS_AVAILABLE {
		t.Errorf("one prober's absent reached %s: %v", delegating[1], got)
	}
	gone = []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_ABSENT, false)}
	p.Ingest(liar, nil, true, gone, nil, s.apply(liar, gone))
	for _, n := range delegating[1:] {
		if got := s[n][ref].GetStatus(); got != pb.ImageStatus_IMAGE_STATUS_ABSENT {
			t.Errorf("%s: %v after both probers said absent, want absent", n, got)
		}
	}
}

func rateLimited(ref string, retryAfter time.Duration) *pb.ImageReport {
	im := image(ref, pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED, false)
	im.Endpoints[0].HttpStatus = 429
	im.Endpoints[0].RetryAfter = durationpb.New(retryAfter)
	return im
}

// Holds are capped at MaxHold, expire, are taken only from a key's chosen
// probers, and are counted per reporting node.
func TestPlannerHolds(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := store{}
	p := New(Options{Replicas: 2, Sink: s, Now: func() time.Time { return now }})
	const ref = "reg:5000/app:v1"
	probers, delegating := sixNodes(t, p, s, ref)

	// A node that is no prober of the key: no hold.
	forged := []*pb.ImageReport{rateLimited(ref, 100*365*24*time.Hour)}
	p.Ingest(delegating[0], nil, true, forged, nil, s.apply(delegating[0], forged))
	if h := p.Stats().Holds; len(h) != 0 {
		t.Errorf("holds %v after a 429 from %s, no prober of the key", h, delegating[0])
	}
	// A prober's 100-year Retry-After holds for MaxHold at most.
	limited := []*pb.ImageReport{rateLimited(ref, 100*365*24*time.Hour)}
	p.Ingest(probers[0], nil, true, limited, nil, s.apply(probers[0], limited))
	st := p.Stats()
	if h := st.Holds["reg:5000"]; h <= 0 || h > MaxHold {
		t.Errorf("hold %v, want (0, %v]", h, MaxHold)
	}
	if got := st.HoldsByNode[probers[0]]; got != 1 {
		t.Errorf("holds counted for %s: %d, want 1 (all: %v)", probers[0], got, st.HoldsByNode)
	}
	if got := st.HoldsByNode[delegating[0]]; got != 0 {
		t.Errorf("holds counted for %s: %d, want 0", delegating[0], got)
	}
	d := p.DirectiveSince(probers[1], "")
	if len(d.GetBudgets()) != 1 || d.GetBudgets()[0].GetHoldUntil().AsTime().After(now.Add(MaxHold)) {
		t.Errorf("budgets %v, want a hold of at most %v", d.GetBudgets(), MaxHold)
	}
	// It expires, and is forgotten.
	now = now.Add(MaxHold + time.Second)
	if h := p.Stats().Holds; len(h) != 0 {
		t.Errorf("holds %v after %v", h, MaxHold)
	}
	p.Ingest(probers[1], nil, true, []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)}, nil, func() {})
	p.mu.Lock()
	n := len(p.holds)
	p.mu.Unlock()
	if n != 0 {
		t.Errorf("%d expired holds still kept", n)
	}
}

// Registry hosts no node names any more leave the planner's maps, so that
// cycling names cannot grow its state and series.
func TestPlannerPrunesRegistries(t *testing.T) {
	p := New(Options{Replicas: 2, Budgets: map[string]float64{}})
	for i := range 100 {
		reg := fmt.Sprintf("reg-%d.example", i)
		im := image(reg+"/app:v1", pb.ImageStatus_IMAGE_STATUS_RATE_LIMITED, false)
		im.Registry = reg
		im.Endpoints[0].RatelimitRemaining = "0;w=21600"
		im.Endpoints[0].HttpStatus = 429
		im.Endpoints[0].RetryAfter = durationpb.New(time.Minute)
		p.Ingest("a", node("a", ""), true, []*pb.ImageReport{im}, nil, func() {})
	}
	st := p.Stats()
	if len(st.Load) != 1 || len(st.RateLimitRemaining) != 1 || len(st.Holds) > 1 {
		t.Errorf("after 100 registry names, one at a time: load %d hosts, ratelimit %d, holds %d; want 1, 1, at most 1",
			len(st.Load), len(st.RateLimitRemaining), len(st.Holds))
	}
	p.Forget("a")
	st = p.Stats()
	if len(st.Load)+len(st.RateLimitRemaining)+len(st.Holds)+len(st.Factor) != 0 {
		t.Errorf("after the node left: %+v", st)
	}
}

// The probers a planner keeps while nodes join one by one (rechoosing a
// key only when the joining member can move its picks) are the ones a
// pick over all the members chooses, in every zone layout: three zones,
// one, none, and zones with a single node, where picks fall back.
func TestIncrementalPicksMatchChoose(t *testing.T) {
	layouts := map[string]func(n int) string{
		"three zones": func(n int) string { return fmt.Sprintf("z%d", n%3) },
		"one zone":    func(int) string { return "z0" },
		"no zones":    func(int) string { return "" },
		"lopsided": func(n int) string {
			if n%17 == 0 {
				return "rare"
			}
			return "common"
		},
	}
	for name, zoneOf := range layouts {
		t.Run(name, func(t *testing.T) {
			for _, k := range []int{1, 2, 3} {
				p := New(Options{Replicas: k})
				size := benchSize{nodes: 300, perNode: 20, distinct: 200}
				zones := map[string]string{}
				for _, n := range rand.New(rand.NewPCG(uint64(k), 9)).Perm(size.nodes) {
					name := fmt.Sprintf("node-%d", n)
					zones[name] = zoneOf(n)
					p.Ingest(name, node(name, zones[name]), true, size.images(n), nil, func() {})
				}
				p.groups.each(func(_ groupID, g *group) {
					var all []Candidate
					for m := range g.members {
						name := p.nodes.name(m)
						all = append(all, Candidate{Node: name, Zone: zones[name]})
					}
					if got, want := p.names(g.chosen[:g.picked]), Choose(string(g.key), all, k); !slices.Equal(got, want) {
						t.Fatalf("k=%d %s: probers %v, Choose over all %d members %v", k, imageOf(g.key), got, len(all), want)
					}
				})
			}
		})
	}
}

// names are the nodes' names.
func (p *Planner) names(ids []nodeID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = p.nodes.name(id)
	}
	return out
}

// A message that first settles a key whose probers disagreed (its
// sender, joining, takes the dissenting prober's place) and then splits
// it again (the sender's own answer disagrees) shares nothing: the
// delegated nodes keep the result they had, never an empty one.
func TestPlannerSettleAndSplitInOneMessage(t *testing.T) {
	s := store{}
	p := New(Options{Replicas: 3, Sink: s})
	const ref = "reg:5000/app:v1"
	key := string(KeyOf(image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)))
	names := []string{"n1", "n2", "n3", "n4", "n5", "n6"}
	for _, n := range names {
		ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)}
		p.Ingest(n, node(n, ""), true, ims, nil, s.apply(n, ims))
	}
	var all []Candidate
	for _, n := range names {
		all = append(all, Candidate{Node: n})
	}
	probers := Choose(key, all, 3)
	var delegating []string
	for _, n := range names {
		if !slices.Contains(probers, n) {
			delegating = append(delegating, n)
			ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, true)}
			p.Ingest(n, nil, true, ims, nil, s.apply(n, ims))
		}
	}
	// The probers agree (available, shared), then the last of them,
	// the lowest score, dissents.
	for _, n := range probers {
		ims := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)}
		p.Ingest(n, nil, true, ims, nil, s.apply(n, ims))
	}
	dissent := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_ABSENT, false)}
	p.Ingest(probers[2], nil, true, dissent, nil, s.apply(probers[2], dissent))
	// A node scoring above every prober joins saying absent: the picks
	// are it and the two that agree, which settles the key, and then
	// its own answer splits it.
	joiner := ""
	for i := 0; joiner == ""; i++ {
		if n := fmt.Sprintf("x%d", i); score(key, n) > score(key, probers[0]) {
			joiner = n
		}
	}
	gone := []*pb.ImageReport{image(ref, pb.ImageStatus_IMAGE_STATUS_ABSENT, false)}
	p.Ingest(joiner, node(joiner, ""), true, gone, nil, s.apply(joiner, gone))
	if d := p.DirectiveSince(delegating[0], ""); len(d.GetAssigned()) != 1 {
		t.Fatalf("%s's plan %v: want the key assigned while its probers disagree", delegating[0], d)
	}
	for _, n := range delegating {
		if got := s[n][ref]; got.GetStatus() != pb.ImageStatus_IMAGE_STATUS_AVAILABLE || len(got.GetEndpoints()) != 1 {
			t.Errorf("%s's image after the probers split again: %v", n, got)
		}
	}
}

// Nodes, images, registries and zones that come and go leave nothing in
// the planner: their numbers are reused, so that a churn of names (a
// 15,000-node cluster replacing every node, images replaced by new tags)
// does not grow its tables.
func TestPlannerChurnReusesNumbers(t *testing.T) {
	p := New(Options{Replicas: 2})
	slots := func() [5]int {
		return [5]int{len(p.nodes.slots), len(p.refs.slots), len(p.groups.slots), len(p.hosts.slots), len(p.zones.slots)}
	}
	var first [5]int
	for wave := range 4 {
		size := benchSize{nodes: 300, perNode: 20, distinct: 200}
		var stops []func()
		for n := range size.nodes {
			name := fmt.Sprintf("wave-%d-node-%d", wave, n)
			ims := size.images(n)
			for _, im := range ims { // new tags, registries and zones every wave
				im.Image = strings.Replace(im.Image, ":v1", fmt.Sprintf(":w%d", wave), 1)
				im.Registry = fmt.Sprintf("w%d-%s", wave, im.Registry)
			}
			if n%2 == 0 {
				_, stop := p.Watch(name)
				stops = append(stops, stop)
			}
			p.Ingest(name, node(name, fmt.Sprintf("w%d-z%d", wave, n%3)), true, ims, nil, func() {})
		}
		if wave == 0 {
			first = slots()
		}
		for _, stop := range stops {
			stop()
		}
		for n := range size.nodes {
			p.Forget(fmt.Sprintf("wave-%d-node-%d", wave, n))
		}
		if n := p.nodes.len() + p.refs.len() + p.groups.len() + p.hosts.len(); n != 0 || p.zones.len() != 1 {
			t.Fatalf("wave %d gone: %d nodes, %d references, %d keys, %d hosts, %d zones left", wave,
				p.nodes.len(), p.refs.len(), p.groups.len(), p.hosts.len(), p.zones.len())
		}
		if got := slots(); got != first {
			t.Fatalf("wave %d: tables %v long, %v after the first wave", wave, got, first)
		}
	}
	st := p.Stats()
	if st.Keys+st.Members+len(st.Load)+len(st.Factor)+len(st.Holds)+len(st.RateLimitRemaining) != 0 {
		t.Errorf("after every wave left: %+v", st)
	}
}

// A reference or credential source with a NUL in it can spell another
// reference's key: the node's second image of the key is left out of the
// plan (the node checks it itself) rather than joining the key twice, and
// the node leaves nothing behind.
func TestPlannerKeySpelledTwiceByOneNode(t *testing.T) {
	p := New(Options{Replicas: 2})
	a := image("reg:5000/a", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)
	a.CredentialSource = "b\x00c"
	b := image("reg:5000/a\x00b", pb.ImageStatus_IMAGE_STATUS_AVAILABLE, false)
	b.CredentialSource = "c"
	if KeyOf(a) != KeyOf(b) {
		t.Fatalf("keys %q and %q differ", KeyOf(a), KeyOf(b))
	}
	both := func() []*pb.ImageReport {
		return []*pb.ImageReport{proto.Clone(a).(*pb.ImageReport), proto.Clone(b).(*pb.ImageReport)}
	}
	// Alone with the key, the node drops one of the two images and then
	// reports the other again.
	p.Ingest("n1", node("n1", ""), true, both(), nil, func() {})
	p.Ingest("n1", nil, false, nil, []string{"reg:5000/a"}, func() {})
	p.Ingest("n1", nil, true, []*pb.ImageReport{proto.Clone(b).(*pb.ImageReport)}, nil, func() {})
	p.Ingest("n2", node("n2", ""), true, both(), nil, func() {})
	p.Ingest("n1", nil, true, both(), nil, func() {})
	for _, n := range []string{"n1", "n2"} {
		if d := p.DirectiveSince(n, ""); len(d.GetAssigned())+len(d.GetDelegated()) > 1 {
			t.Errorf("%s's plan %v: the key at most once", n, d)
		}
		p.Forget(n)
	}
	if p.nodes.len()+p.refs.len()+p.groups.len()+p.hosts.len() != 0 {
		t.Errorf("left: %d nodes, %d references, %d keys, %d hosts", p.nodes.len(), p.refs.len(), p.groups.len(), p.hosts.len())
	}
}
