package nodeimage

import (
	"hash/maphash"
	"slices"
	"sync"
	"time"
	"unique"
	"weak"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Table keeps one copy of identical folded reports. A delegated image
// folded with its probers' shared result (SharedFrom set) is the same
// report on every node that has it, but for the containers that use it
// (kept apart, in Image.Containers), and the node's own since time or
// digest. At 5,000 nodes × 100 images the images no container uses are a
// third of all, and their reports alone were 48 MB of the state; with the
// containers apart the other two thirds share too (docs/benchmarks.md,
// issue 21).
//
// Reports in the state are never modified (state.Store), so nodes can
// share one. The table holds weak pointers: a report no node holds any
// more is collected, and its entry swept. Safe for concurrent use.
type Table struct {
	mu    sync.Mutex
	seed  maphash.Seed
	table map[key]kept
	added int
	// byResult are the folded reports kept lately, by the endpoint results
	// they were folded with (one slice per prober's result, shared by every
	// report it is folded into: its first element stands for it).
	byResult map[*pb.EndpointResult]keptForResult
}

// kept is a shared report in the table, and its encoded size (computed
// once: every node holding it counts it in its byte budget).
type kept struct {
	report weak.Pointer[pb.ImageReport]
	size   int32
}

// NewTable returns an empty Table.
func NewTable() *Table {
	return &Table{seed: maphash.MakeSeed(), table: map[key]kept{}, byResult: map[*pb.EndpointResult]keptForResult{}}
}

// Keep is im as the store keeps it: its containers taken out into
// Image.Containers (im is changed: it must be the caller's to change, a
// message not yet applied)
// and the rest shared with an equal report kept before. A folded report
// is shared as it is. A report of the node's own check is shared without
// what is the node's alone: its endpoints' latencies are kept beside it
// (Image.Latencies), and the check times and rate-limit answers (the
// report's and its endpoints' checked_at, ratelimit_remaining,
// retry_after), which no reader of the state looks at once the probe
// planner has read the message, are left out of the shared copy.
func (t *Table) Keep(im *pb.ImageReport) Image {
	cs := containersOf(im.GetContainers())
	im.Containers = nil
	if im.GetSharedFrom() != "" {
		r, size := t.folded(im)
		return Image{ImageReport: r, Containers: cs, reportSize: size}
	}
	r, size := t.of(im, true)
	return Image{ImageReport: r, Containers: cs, Latencies: latencies(im.GetEndpoints()), reportSize: size}
}

// maxByResult bounds Table.byResult: the results folded lately, and the
// reports kept for each.
const maxByResult, maxPerResult = 1 << 14, 8

// sized is a report kept, and its encoded size.
type sized struct {
	report *pb.ImageReport
	size   int32
}

// keptForResult are the reports kept for one result: the first in the
// table's map itself (most results have one: a look costs no more
// memory reads than the map's), others, a digest or in-use apart, beside.
type keptForResult struct {
	first sized
	more  []sized
}

// folded is of for a folded report, found first among those kept for the
// same result. A prober's result is folded into every node that delegated
// the key, one after the other, and a new result comes with every check:
// the reports folded from one result differ only in what is the node's
// own (a digest, in use or not), and comparing with those few costs a
// fraction of a key's hash and a look in a table of millions
// (docs/benchmarks.md, issue 21).
func (t *Table) folded(im *pb.ImageReport) (*pb.ImageReport, int32) {
	eps := im.GetEndpoints()
	if len(eps) == 0 {
		return t.of(im, false)
	}
	t.mu.Lock()
	rk, ok := t.byResult[eps[0]]
	if ok && sameFolded(rk.first.report, im) {
		t.mu.Unlock()
		return rk.first.report, rk.first.size
	}
	for _, c := range rk.more {
		if sameFolded(c.report, im) {
			t.mu.Unlock()
			return c.report, c.size
		}
	}
	t.mu.Unlock()
	r, size := t.of(im, false)
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.byResult) >= maxByResult {
		clear(t.byResult) // the results of checks before the last few thousand
	}
	rk, ok = t.byResult[eps[0]]
	switch {
	case !ok:
		t.byResult[eps[0]] = keptForResult{first: sized{r, size}}
	case len(rk.more) < maxPerResult-1:
		rk.more = append(rk.more, sized{r, size})
		t.byResult[eps[0]] = rk
	}
	return r, size
}

// sameFolded reports whether the folded report im is kept as kept: equal
// in every field the key covers. It compares the fields one by one rather
// than building both keys (keyOf): what a fold puts in (the result's
// reason, check time, endpoints) is one value in both, found equal by its
// pointer. TestFoldedAgrees holds it to the key.
func sameFolded(kept, im *pb.ImageReport) bool {
	if kept.GetStatus() != im.GetStatus() || kept.GetInUse() != im.GetInUse() || kept.GetDegraded() != im.GetDegraded() ||
		kept.GetDrifted() != im.GetDrifted() || kept.GetDelegated() != im.GetDelegated() ||
		kept.GetImage() != im.GetImage() || kept.GetImageId() != im.GetImageId() || kept.GetDigest() != im.GetDigest() ||
		kept.GetReason() != im.GetReason() || kept.GetRegistry() != im.GetRegistry() ||
		kept.GetRegistryDigest() != im.GetRegistryDigest() || kept.GetCredentialSource() != im.GetCredentialSource() ||
		kept.GetSharedFrom() != im.GetSharedFrom() ||
		!sameStamp(kept.GetCheckedAt(), im.GetCheckedAt()) || !sameStamp(kept.GetStatusSince(), im.GetStatusSince()) ||
		string(kept.ProtoReflect().GetUnknown()) != string(im.ProtoReflect().GetUnknown()) {
		return false
	}
	return equalRest(kept, im, false)
}

// sameStamp reports whether a and b are one timestamp, as the key tells
// them apart (stampOf).
func sameStamp(a, b *timestamppb.Timestamp) bool {
	if a == b {
		return true
	}
	sa, ok1 := stampOf(a)
	sb, ok2 := stampOf(b)
	return ok1 && ok2 && sa == sb
}

// nodeless is a copy of a node's own report without what is the node's
// alone (see Keep): the shared copy of it, made only when no equal one is
// kept (keyOf and equalRest look at a report as its nodeless copy would
// be, without making it). im is not changed: the probe planner may hold
// it as a prober's answer.
func nodeless(im *pb.ImageReport) *pb.ImageReport {
	out := proto.CloneOf(im)
	out.CheckedAt = nil
	for _, e := range out.Endpoints {
		e.Latency, e.CheckedAt, e.RatelimitRemaining, e.RetryAfter = nil, nil, "", nil
	}
	return out
}

// latencies are the endpoints' latencies by index (-1: none measured), or
// nil when there are no endpoints.
func latencies(eps []*pb.EndpointResult) []time.Duration {
	if len(eps) == 0 {
		return nil
	}
	out := make([]time.Duration, len(eps))
	for i, e := range eps {
		out[i] = -1
		if l := e.GetLatency(); l != nil {
			out[i] = l.AsDuration()
		}
	}
	return out
}

// key is what tells two reports (containers taken out) apart: every field
// of ImageReport, the repeated ones as a hash of their content (equalRest
// compares them when keys match). TestKeyCoversEveryField holds it to
// the message's fields.
type key struct {
	image, imageID, digest, reason, registry, registryDigest, credentialSource, sharedFrom string
	status                                                                                 pb.ImageStatus
	inUse, degraded, drifted, delegated                                                    bool
	checkedAt, statusSince                                                                 stamp
	// rest is a hash of the endpoints and repo digests.
	rest uint64
	// unknown are fields of a newer agent's report, as encoded.
	unknown string
}

// stamp is a timestamp or duration by value; set tells an unset one from
// a zero one.
type stamp struct {
	seconds int64
	nanos   int32
	set     bool
}

func stampOf(ts *timestamppb.Timestamp) (stamp, bool) {
	if ts == nil {
		return stamp{}, true
	}
	return stamp{ts.GetSeconds(), ts.GetNanos(), true}, len(ts.ProtoReflect().GetUnknown()) == 0
}

func spanOf(d *durationpb.Duration) (stamp, bool) {
	if d == nil {
		return stamp{}, true
	}
	return stamp{d.GetSeconds(), d.GetNanos(), true}, len(d.ProtoReflect().GetUnknown()) == 0
}

// endpoint is an EndpointResult by value, but for its unknown fields.
type endpoint struct {
	url, reason, ratelimitRemaining string
	role                            pb.EndpointRole
	status                          pb.ImageStatus
	httpStatus                      int32
	skipped                         bool
	latency, checkedAt, retryAfter  stamp
}

// endpointOf is e by value, or, own, as in a nodeless copy of its report
// (without its latency, check time and rate-limit answers); ok is false
// when e (or a timestamp in it) has fields this aggregator does not know.
func endpointOf(e *pb.EndpointResult, own bool) (endpoint, bool) {
	v := endpoint{url: e.GetUrl(), reason: e.GetReason(), role: e.GetRole(), status: e.GetStatus(),
		httpStatus: e.GetHttpStatus(), skipped: e.GetSkipped()}
	ok := e != nil && len(e.ProtoReflect().GetUnknown()) == 0
	if own {
		return v, ok
	}
	var ok1, ok2, ok3 bool
	v.latency, ok1 = spanOf(e.GetLatency())
	v.checkedAt, ok2 = stampOf(e.GetCheckedAt())
	v.retryAfter, ok3 = spanOf(e.GetRetryAfter())
	v.ratelimitRemaining = e.GetRatelimitRemaining()
	return v, ok && ok1 && ok2 && ok3
}

// keyOf is im's key, or, own, its nodeless copy's (nodeless); ok is false
// when im cannot be shared: it has a message this aggregator does not know
// all of below the report itself (rare enough not to be worth a key), or a
// nil endpoint.
func (t *Table) keyOf(im *pb.ImageReport, own bool) (key, bool) {
	checkedAt, ok1 := stampOf(im.GetCheckedAt())
	if own {
		checkedAt, ok1 = stamp{}, true
	}
	statusSince, ok2 := stampOf(im.GetStatusSince())
	if !ok1 || !ok2 {
		return key{}, false
	}
	k := key{image: im.GetImage(), imageID: im.GetImageId(), digest: im.GetDigest(), reason: im.GetReason(),
		registry: im.GetRegistry(), registryDigest: im.GetRegistryDigest(), credentialSource: im.GetCredentialSource(),
		sharedFrom: im.GetSharedFrom(), status: im.GetStatus(), inUse: im.GetInUse(), degraded: im.GetDegraded(),
		drifted: im.GetDrifted(), delegated: im.GetDelegated(), checkedAt: checkedAt, statusSince: statusSince}
	if u := im.ProtoReflect().GetUnknown(); len(u) > 0 {
		k.unknown = string(u)
	}
	var h maphash.Hash
	h.SetSeed(t.seed)
	for _, e := range im.GetEndpoints() {
		v, ok := endpointOf(e, own)
		if !ok {
			return key{}, false
		}
		maphash.WriteComparable(&h, v)
	}
	h.WriteByte(0)
	for _, d := range im.GetRepoDigests() {
		h.WriteString(d)
		h.WriteByte(0)
	}
	k.rest = h.Sum64()
	return k, true
}

// equalRest reports whether a and b, of equal keys or fields, have the
// same endpoints and repo digests (not merely the same hash of them), or,
// own, whether their nodeless copies have (a kept copy of an own report is
// one already); an endpoint with fields this aggregator does not know is
// equal to none.
func equalRest(a, b *pb.ImageReport, own bool) bool {
	if !slices.Equal(a.GetRepoDigests(), b.GetRepoDigests()) {
		return false
	}
	ea, eb := a.GetEndpoints(), b.GetEndpoints()
	if len(ea) != len(eb) {
		return false
	}
	if len(ea) == 0 || &ea[0] == &eb[0] {
		return true // one slice: folded from one result
	}
	for i := range ea {
		va, ok1 := endpointOf(ea[i], own)
		vb, ok2 := endpointOf(eb[i], own)
		if !ok1 || !ok2 || va != vb {
			return false
		}
	}
	return true
}

// of returns the canonical copy of im, or, own, of its nodeless copy: an
// earlier report equal to it, or im itself (its nodeless copy), remembered
// for the next. The nodeless copy is made only then: every node's own check
// of an image is the same report as the first node's but for what nodeless
// drops, and cloning each to find it kept was a fourth of an aggregator
// restart's apply at 15,000 nodes (docs/benchmarks.md, issue 21).
func (t *Table) of(im *pb.ImageReport, own bool) (*pb.ImageReport, int32) {
	k, ok := t.keyOf(im, own)
	if !ok {
		return unshared(im, own)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.table[k]; ok {
		if v := e.report.Value(); v != nil {
			if equalRest(v, im, own) {
				return v, e.size
			}
			return unshared(im, own) // a hash collision: keep the first, do not share
		}
	}
	if own {
		im = nodeless(im)
	}
	intern(im, own)
	k, _ = t.keyOf(im, own) // the same key, holding the interned strings rather than the message's
	size := int32(proto.Size(im))
	t.table[k] = kept{report: weak.Make(im), size: size}
	if t.added++; t.added > len(t.table) {
		// As many added since the last sweep as the table holds: sweep
		// the entries whose report was collected (amortized O(1)).
		for k, e := range t.table {
			if e.report.Value() == nil {
				delete(t.table, k)
			}
		}
		t.added = 0
	}
	return im, size
}

// intern replaces the strings of a report kept as a new shared copy with
// one canonical copy (package unique): the reports of different images,
// and of one image with different answers, repeat registries, digests,
// reasons and endpoint URLs. A folded report's (not own) endpoints,
// reason and shared_from are its probers' result's, shared by every
// report folded from it and never changed: they are left as they are, so
// that comparing the next fold with it finds them equal at once
// (sameFolded). The key's strings are equal before and after, so the
// entry stays found.
func intern(im *pb.ImageReport, own bool) {
	im.Image = u(im.Image)
	im.ImageId = u(im.ImageId)
	im.Digest = u(im.Digest)
	im.Registry = u(im.Registry)
	im.RegistryDigest = u(im.RegistryDigest)
	im.CredentialSource = u(im.CredentialSource)
	for i, d := range im.RepoDigests {
		im.RepoDigests[i] = u(d)
	}
	if own {
		im.Reason = u(im.Reason)
		im.SharedFrom = u(im.SharedFrom)
		for _, e := range im.Endpoints {
			e.Url = u(e.Url)
			e.Reason = u(e.Reason)
		}
	}
}

// unshared is im as kept when it is not shared: im itself, or, own, its
// nodeless copy.
func unshared(im *pb.ImageReport, own bool) (*pb.ImageReport, int32) {
	if own {
		im = nodeless(im)
	}
	return im, int32(proto.Size(im))
}

func u(s string) string {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}
