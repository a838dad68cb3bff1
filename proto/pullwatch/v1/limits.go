package pullwatchv1

// This file is the one home of the report's limits: how many items and how
// many bytes each field of an agent message may carry. The agent clips to
// them before a string enters a report (agent/pkg/report), the aggregator
// refuses what exceeds them (aggregator/pkg/ingest). They bound memory per
// node and the cardinality of the metrics built from a report; real nodes
// stay far below.

import (
	"strings"
	"unicode/utf8"
)

// Counts.
const (
	// MaxImages bounds images per snapshot, and upserts plus removals per update.
	MaxImages = 5000
	// MaxEndpoints per image; a runtime tries a handful of mirrors.
	MaxEndpoints = 32
	// MaxRepoDigests per image.
	MaxRepoDigests = 64
	// MaxContainers per image; above any node's max-pods times containers.
	MaxContainers = 5000
	// MaxLabels per node.
	MaxLabels = 256
)

// Bytes per string field.
const (
	// MaxImageRef is a normalized reference; also each repo digest.
	MaxImageRef = 512
	// MaxReason is a human explanation (image and endpoint reasons).
	MaxReason = 1024
	// MaxURL is an endpoint URL or the runtime's endpoint.
	MaxURL = 2048
	// MaxLabelKey is Kubernetes': a 253-byte prefix, '/', a 63-byte name.
	MaxLabelKey = 317
	// MaxShort is ids, digests, versions, hosts, names, label values.
	MaxShort = 256
)

// clipMark ends a string Clip shortened.
const clipMark = "…"

// Clip returns s as a field of at most limit bytes may carry it: valid
// UTF-8 (each invalid byte sequence replaced by U+FFFD, as protobuf
// refuses invalid UTF-8 in a string field) and, when longer than limit,
// cut at a character boundary and ended with "…". Strings already fit
// are returned as they are.
func Clip(s string, limit int) string {
	if len(s) <= limit && utf8.ValidString(s) {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= limit {
		return s
	}
	mark := clipMark
	if limit < len(mark) {
		mark = ""
	}
	cut := max(limit-len(mark), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// Fits reports whether s is valid UTF-8 of at most limit bytes: what Clip
// returns unchanged.
func Fits(s string, limit int) bool { return len(s) <= limit && utf8.ValidString(s) }
