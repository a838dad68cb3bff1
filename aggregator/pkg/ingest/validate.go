package ingest

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Reason says why a report was refused. It is the "reason" label of
// pullwatch_reports_rejected_total, so the set is fixed and small.
type Reason string

// The reasons a report is refused.
const (
	ReasonNoBody        Reason = "no_body"        // neither snapshot nor update
	ReasonBadSequence   Reason = "bad_sequence"   // sequence not strictly increasing from 1
	ReasonInvalidNode   Reason = "invalid_node"   // node name empty or not a DNS-1123 subdomain
	ReasonNodeMismatch  Reason = "node_mismatch"  // another node than the stream's first snapshot
	ReasonInvalidImage  Reason = "invalid_image"  // empty or duplicate image reference
	ReasonInvalidStatus Reason = "invalid_status" // image or endpoint status UNSPECIFIED or unknown
	ReasonInvalidRole   Reason = "invalid_role"   // endpoint role UNSPECIFIED or unknown
	ReasonTooManyImages Reason = "too_many_images"
	ReasonTooManyItems  Reason = "too_many_items" // endpoints, containers, repo digests or labels over limit
	ReasonFieldTooLong  Reason = "field_too_long"
	ReasonTooLarge      Reason = "too_large"    // over --max-report-bytes; refused by gRPC itself
	ReasonInvalidUTF8   Reason = "invalid_utf8" // a string that is not valid UTF-8
	// ReasonInvalidRegistry: an image's registry is not a host[:port].
	ReasonInvalidRegistry Reason = "invalid_registry"
)

// Reasons lists every Reason as the string Observer.ReportRejected gets,
// so that counters can start at zero.
func Reasons() []string {
	return []string{
		string(ReasonNoBody), string(ReasonBadSequence), string(ReasonInvalidNode), string(ReasonNodeMismatch),
		string(ReasonInvalidImage), string(ReasonInvalidStatus), string(ReasonInvalidRole),
		string(ReasonTooManyImages), string(ReasonTooManyItems), string(ReasonFieldTooLong), string(ReasonTooLarge),
		string(ReasonInvalidUTF8), string(ReasonInvalidRegistry),
	}
}

// The limits on what one message may carry are the report's, in
// proto/pullwatch/v1/limits.go: the agent clips to them, the aggregator
// refuses past them.
const (
	// MaxImages bounds images per snapshot, and upserts plus removals per update.
	MaxImages = pullwatchv1.MaxImages

	maxEndpoints   = pullwatchv1.MaxEndpoints
	maxRepoDigests = pullwatchv1.MaxRepoDigests
	maxContainers  = pullwatchv1.MaxContainers
	maxLabels      = pullwatchv1.MaxLabels

	maxImageRef = pullwatchv1.MaxImageRef
	maxReason   = pullwatchv1.MaxReason
	maxURL      = pullwatchv1.MaxURL
	maxLabelKey = pullwatchv1.MaxLabelKey
	maxShort    = pullwatchv1.MaxShort
)

// Error is a refused report: which field, why, and the Reason for metrics.
type Error struct {
	Reason Reason
	Field  string // path in the message, e.g. snapshot.images[3].endpoints[0].status
	Msg    string
}

func (e *Error) Error() string { return e.Field + ": " + e.Msg }

func fail(reason Reason, field, format string, args ...any) *Error {
	return &Error{Reason: reason, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks one message on its own: everything that does not depend
// on earlier messages of the stream. It returns nil or an *Error: the
// first problem, whether it refuses the whole message or one image of it.
func Validate(msg *pullwatchv1.AgentMessage) error {
	// Returning an *Error directly would turn a nil *Error into a non-nil
	// error interface.
	refused, err := check(msg)
	switch {
	case err != nil:
		return err
	case len(refused) > 0:
		return refused[0].err
	}
	return nil
}

// Screen checks one message like Validate, but a problem inside one image
// report refuses that image only: Screen replaces the report in msg by an
// unknown one that says why (or drops it when its reference itself is
// unusable or listed twice) and returns the refusals, one per image, so
// the rest of the node's report is kept. A problem with the message as a
// whole (its node, its size, its sequence) is err, and msg is unchanged.
func Screen(msg *pullwatchv1.AgentMessage) (refused []*Error, err *Error) {
	bad, err := check(msg)
	if err != nil || len(bad) == 0 {
		return nil, err
	}
	var images *[]*pullwatchv1.ImageReport
	switch body := msg.GetBody().(type) {
	case *pullwatchv1.AgentMessage_Snapshot:
		images = &body.Snapshot.Images
	case *pullwatchv1.AgentMessage_Update:
		images = &body.Update.Upserts
	}
	drop := make(map[int]bool, len(bad))
	for _, b := range bad {
		refused = append(refused, b.err)
		if b.drop {
			drop[b.index] = true
			continue
		}
		(*images)[b.index] = refusedImage((*images)[b.index], b.err)
	}
	if len(drop) > 0 {
		kept := make([]*pullwatchv1.ImageReport, 0, len(*images)-len(drop))
		for i, im := range *images {
			if !drop[i] {
				kept = append(kept, im)
			}
		}
		*images = kept
	}
	return refused, nil
}

// refusedImage stands in for an image report the aggregator refused: the
// image stays on the node, unknown, with the refusal as its reason.
func refusedImage(im *pullwatchv1.ImageReport, err *Error) *pullwatchv1.ImageReport {
	return &pullwatchv1.ImageReport{
		Image:     im.GetImage(),
		InUse:     im.GetInUse(),
		Status:    pullwatchv1.ImageStatus_IMAGE_STATUS_UNKNOWN,
		Reason:    pullwatchv1.Clip("the aggregator refused this image's report ("+string(err.Reason)+"): "+err.Error(), maxReason),
		CheckedAt: im.GetCheckedAt(),
	}
}

// imageRefusal is one image report refused: its index in the message's
// list, and whether it must go (its reference is unusable) rather than
// be replaced.
type imageRefusal struct {
	index int
	drop  bool
	err   *Error
}

func check(msg *pullwatchv1.AgentMessage) ([]imageRefusal, *Error) {
	switch body := msg.GetBody().(type) {
	case *pullwatchv1.AgentMessage_Snapshot:
		return validateSnapshot(body.Snapshot)
	case *pullwatchv1.AgentMessage_Update:
		return validateUpdate(body.Update)
	default:
		return nil, fail(ReasonNoBody, "body", "message has neither snapshot nor update")
	}
}

func validateSnapshot(s *pullwatchv1.NodeSnapshot) ([]imageRefusal, *Error) {
	if err := validateNode("snapshot.node", s.GetNode()); err != nil {
		return nil, err
	}
	if n := len(s.GetImages()); n > MaxImages {
		return nil, fail(ReasonTooManyImages, "snapshot.images", "%d images, limit %d", n, MaxImages)
	}
	return validateImages("snapshot.images", s.GetImages(), nil), nil
}

func validateUpdate(u *pullwatchv1.NodeUpdate) ([]imageRefusal, *Error) {
	if err := validateNodeName("update.node_name", u.GetNodeName()); err != nil {
		return nil, err
	}
	if n := len(u.GetUpserts()) + len(u.GetRemovedImages()); n > MaxImages {
		return nil, fail(ReasonTooManyImages, "update", "%d upserts plus removed_images, limit %d", n, MaxImages)
	}
	removed := make(map[string]bool, len(u.GetRemovedImages()))
	for i, ref := range u.GetRemovedImages() {
		if err := validateImageRef(place{base: "update.removed_images", i: i, j: -1}, ref, removed); err != nil {
			return nil, err
		}
		removed[ref] = true
	}
	// An image both upserted and removed would make the result depend on
	// the order the aggregator applies them in; refuse the upsert instead.
	return validateImages("update.upserts", u.GetUpserts(), removed), nil
}

func validateNodeName(field, name string) *Error {
	if name == "" {
		return fail(ReasonInvalidNode, field, "empty; set it to the Kubernetes node name")
	}
	// IsDNS1123Subdomain also enforces the 253-byte limit.
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fail(ReasonInvalidNode, field, "%s is not a valid node name: %s", quote(name), strings.Join(errs, "; "))
	}
	return nil
}

func validateNode(field string, n *pullwatchv1.Node) *Error {
	if err := validateNodeName(field+".name", n.GetName()); err != nil {
		return err
	}
	rt := n.GetRuntime()
	if err := checkLengths(place{base: field, i: -1, j: -1},
		lenCheck{"agent_version", n.GetAgentVersion(), maxShort},
		lenCheck{"os", n.GetOs(), maxShort},
		lenCheck{"architecture", n.GetArchitecture(), maxShort},
		lenCheck{"variant", n.GetVariant(), maxShort},
		lenCheck{"runtime.name", rt.GetName(), maxShort},
		lenCheck{"runtime.version", rt.GetVersion(), maxShort},
		lenCheck{"runtime.api_version", rt.GetApiVersion(), maxShort},
		lenCheck{"runtime.endpoint", rt.GetEndpoint(), maxURL},
	); err != nil {
		return err
	}
	if err := checkCount(place{base: field, i: -1, j: -1, leaf: "labels"}, len(n.GetLabels()), maxLabels); err != nil {
		return err
	}
	for k, v := range n.GetLabels() {
		switch {
		case !utf8.ValidString(k) || !utf8.ValidString(v):
			return fail(ReasonInvalidUTF8, field+".labels", "key %s or its value is not valid UTF-8", quote(k))
		case len(k) > maxLabelKey:
			return fail(ReasonFieldTooLong, field+".labels", "key %s: %d bytes, limit %d", quote(k), len(k), maxLabelKey)
		case len(v) > maxShort:
			return fail(ReasonFieldTooLong, fmt.Sprintf("%s.labels[%s]", field, quote(k)), "%d bytes, limit %d", len(v), maxShort)
		}
	}
	return nil
}

// validateImages checks a list of image reports and returns the refused
// ones. Reports must name distinct images, none of which may be in exclude.
func validateImages(field string, images []*pullwatchv1.ImageReport, exclude map[string]bool) []imageRefusal {
	var refused []imageRefusal
	seen := make(map[string]bool, len(images))
	for i, im := range images {
		at := place{base: field, i: i, j: -1}
		if err := validateImageRef(at.leafed("image"), im.GetImage(), seen); err != nil {
			refused = append(refused, imageRefusal{index: i, drop: true, err: err})
			continue
		}
		if exclude[im.GetImage()] {
			refused = append(refused, imageRefusal{index: i, drop: true, err: fail(ReasonInvalidImage, at.leafed("image").String(), "%s is also in removed_images", quote(im.GetImage()))})
			continue
		}
		seen[im.GetImage()] = true
		if err := validateImage(at, im); err != nil {
			refused = append(refused, imageRefusal{index: i, err: err})
		}
	}
	return refused
}

// validateImageRef checks one image reference; seen holds the references
// already listed, which must not repeat.
func validateImageRef(at place, ref string, seen map[string]bool) *Error {
	switch {
	case ref == "":
		return fail(ReasonInvalidImage, at.String(), "empty; set the normalized image reference")
	case len(ref) > maxImageRef:
		return fail(ReasonFieldTooLong, at.String(), "%d bytes, limit %d", len(ref), maxImageRef)
	case !utf8.ValidString(ref):
		return fail(ReasonInvalidUTF8, at.String(), "%s is not valid UTF-8", quote(ref))
	case seen[ref]:
		return fail(ReasonInvalidImage, at.String(), "%s is listed twice", quote(ref))
	}
	return nil
}

// validateImage checks everything in one report except its reference.
func validateImage(at place, im *pullwatchv1.ImageReport) *Error {
	if err := validateStatus(at.leafed("status"), im.GetStatus()); err != nil {
		return err
	}
	if err := checkLengths(at,
		lenCheck{"image_id", im.GetImageId(), maxShort},
		lenCheck{"digest", im.GetDigest(), maxShort},
		lenCheck{"reason", im.GetReason(), maxReason},
		lenCheck{"registry", im.GetRegistry(), maxShort},
		lenCheck{"registry_digest", im.GetRegistryDigest(), maxShort},
		lenCheck{"credential_source", im.GetCredentialSource(), maxShort},
	); err != nil {
		return err
	}
	if r := im.GetRegistry(); r != "" {
		if why := registryProblem(r); why != "" {
			return fail(ReasonInvalidRegistry, at.leafed("registry").String(), "%s is not a registry host[:port]: %s", quote(r), why)
		}
	}
	if err := checkCount(at.leafed("repo_digests"), len(im.GetRepoDigests()), maxRepoDigests); err != nil {
		return err
	}
	for j, d := range im.GetRepoDigests() {
		if err := checkLengths(at.in("repo_digests", j), lenCheck{"", d, maxImageRef}); err != nil {
			return err
		}
	}
	if err := checkCount(at.leafed("endpoints"), len(im.GetEndpoints()), maxEndpoints); err != nil {
		return err
	}
	for j, ep := range im.GetEndpoints() {
		if err := validateEndpoint(at.in("endpoints", j), ep); err != nil {
			return err
		}
	}
	if err := checkCount(at.leafed("containers"), len(im.GetContainers()), maxContainers); err != nil {
		return err
	}
	for j, c := range im.GetContainers() {
		if err := checkLengths(at.in("containers", j),
			lenCheck{"namespace", c.GetNamespace(), maxShort},
			lenCheck{"pod", c.GetPod(), maxShort},
			lenCheck{"pod_uid", c.GetPodUid(), maxShort},
			lenCheck{"container", c.GetContainer(), maxShort},
			lenCheck{"container_id", c.GetContainerId(), maxShort},
			lenCheck{"state", c.GetState(), maxShort},
		); err != nil {
			return err
		}
	}
	return nil
}

func validateEndpoint(at place, ep *pullwatchv1.EndpointResult) *Error {
	if err := validateStatus(at.leafed("status"), ep.GetStatus()); err != nil {
		return err
	}
	// Like statuses, roles must be set: the agent always knows whether it
	// asked a mirror or the upstream, and the role is a metric label.
	const wantRole = "want ENDPOINT_ROLE_UPSTREAM (1) or ENDPOINT_ROLE_MIRROR (2)"
	switch r := ep.GetRole(); {
	case r == pullwatchv1.EndpointRole_ENDPOINT_ROLE_UNSPECIFIED:
		return fail(ReasonInvalidRole, at.leafed("role").String(), "ENDPOINT_ROLE_UNSPECIFIED (0) is not valid; %s", wantRole)
	case r.Word() == "":
		return fail(ReasonInvalidRole, at.leafed("role").String(), "unknown value %d; %s", int32(r), wantRole)
	}
	return checkLengths(at,
		lenCheck{"url", ep.GetUrl(), maxURL},
		lenCheck{"reason", ep.GetReason(), maxReason},
		lenCheck{"ratelimit_remaining", ep.GetRatelimitRemaining(), maxShort},
	)
}

func validateStatus(at place, s pullwatchv1.ImageStatus) *Error {
	if s.Valid() {
		return nil
	}
	if s == pullwatchv1.ImageStatus_IMAGE_STATUS_UNSPECIFIED {
		return fail(ReasonInvalidStatus, at.String(), "IMAGE_STATUS_UNSPECIFIED (0) is never valid; want one of %s (use unknown when not checked)", pullwatchv1.StatusWords())
	}
	return fail(ReasonInvalidStatus, at.String(), "unknown value %d; want one of %s", int32(s), pullwatchv1.StatusWords())
}

type lenCheck struct {
	name  string // relative to the checkLengths place ("": the place itself)
	value string
	limit int
}

func checkLengths(at place, checks ...lenCheck) *Error {
	for _, c := range checks {
		if len(c.value) > c.limit {
			return fail(ReasonFieldTooLong, at.leafed(c.name).String(), "%d bytes, limit %d", len(c.value), c.limit)
		}
		if !utf8.ValidString(c.value) {
			return fail(ReasonInvalidUTF8, at.leafed(c.name).String(), "%s is not valid UTF-8", quote(c.value))
		}
	}
	return nil
}

func checkCount(at place, n, limit int) *Error {
	if n > limit {
		return fail(ReasonTooManyItems, at.String(), "%d entries, limit %d", n, limit)
	}
	return nil
}

// place is where in a message a check looks, as a value: the name
// (snapshot.images[3].endpoints[0].status) is only built when the check
// fails. Checking a round of 5,000 nodes × 100 good images built some
// 250 MB of names that nobody read before (docs/benchmarks.md).
type place struct {
	base string // snapshot.images, update.upserts, snapshot.node, ...
	i    int    // the element of base, -1: none
	sub  string // a list inside the element: endpoints, containers, repo_digests
	j    int    // the element of sub, -1: none
	leaf string // a field of the innermost element
}

// leafed is p naming a field of its innermost element ("": p itself).
func (p place) leafed(name string) place {
	if name != "" {
		if p.leaf != "" {
			name = p.leaf + "." + name
		}
		p.leaf = name
	}
	return p
}

// in is p's element j of its list sub.
func (p place) in(sub string, j int) place {
	p.sub, p.j = sub, j
	return p
}

func (p place) String() string {
	var b strings.Builder
	b.WriteString(p.base)
	if p.i >= 0 {
		fmt.Fprintf(&b, "[%d]", p.i)
	}
	if p.sub != "" {
		b.WriteString("." + p.sub)
		if p.j >= 0 {
			fmt.Fprintf(&b, "[%d]", p.j)
		}
	}
	if p.leaf != "" {
		b.WriteString("." + p.leaf)
	}
	return b.String()
}

// quote quotes a value for an error message, cut short so that a refused
// report cannot put kilobytes into a log line.
func quote(s string) string {
	const limit = 80
	if len(s) > limit {
		return fmt.Sprintf("%q... (%d bytes)", s[:limit], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// registryProblem says what keeps s from being a registry host as image
// references name it: a DNS name or IP address, with an optional port
// (host[:port], [IPv6][:port]); "" when it is one. The registry is a key
// of the probe planner's maps and a metric label, so nothing else may
// stand there.
func registryProblem(s string) string {
	host, port, hasPort := s, "", false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "no closing ] after an IPv6 address"
		}
		host = s[1:end]
		switch rest := s[end+1:]; {
		case rest == "":
		case strings.HasPrefix(rest, ":"):
			port, hasPort = rest[1:], true
		default:
			return "text after the IPv6 address"
		}
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return "not an IPv6 address in brackets"
		}
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port, hasPort = s[:i], s[i+1:], true
		}
		if why := hostnameProblem(host); why != "" {
			return why
		}
	}
	if hasPort {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return "the port is not a number from 1 to 65535"
		}
	}
	return ""
}

// hostnameProblem says what keeps host from being a DNS name (labels of
// letters, digits and inner hyphens, 63 bytes each, 253 in all) or an
// IPv4 address; "" when it is one.
func hostnameProblem(host string) string {
	if host == "" {
		return "no host"
	}
	if len(host) > 253 {
		return "longer than 253 bytes"
	}
	for label := range strings.SplitSeq(host, ".") {
		switch {
		case label == "":
			return "an empty label"
		case len(label) > 63:
			return "a label longer than 63 bytes"
		case label[0] == '-' || label[len(label)-1] == '-':
			return "a label starting or ending with -"
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return "a character other than letters, digits, - and ."
			}
		}
	}
	return ""
}
