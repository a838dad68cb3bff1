package pullwatchv1

// This file is the one home of the status vocabulary: the words users see
// in JSON, metrics and the status page, and what each status means (how
// bad it is, whether the registry answered, how k8s-image-availability-
// exporter names it). Everything else asks here.

import (
	"fmt"
	"strings"
)

// statusList is every valid status, in the enum's order.
var statusList = []ImageStatus{
	ImageStatus_IMAGE_STATUS_AVAILABLE,
	ImageStatus_IMAGE_STATUS_ABSENT,
	ImageStatus_IMAGE_STATUS_UNAUTHORIZED,
	ImageStatus_IMAGE_STATUS_FORBIDDEN,
	ImageStatus_IMAGE_STATUS_RATE_LIMITED,
	ImageStatus_IMAGE_STATUS_UNREACHABLE,
	ImageStatus_IMAGE_STATUS_PLATFORM_MISSING,
	ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT,
	ImageStatus_IMAGE_STATUS_UNKNOWN,
}

// statusSlots is one more than the highest status value this build knows.
const statusSlots = int(ImageStatus_IMAGE_STATUS_UNKNOWN) + 1

// statusWords[s] is the word of status s: the enum name without the
// IMAGE_STATUS_ prefix, lowercased. "" for UNSPECIFIED.
var statusWords = func() (w [statusSlots]string) {
	for _, s := range statusList {
		w[s] = strings.ToLower(strings.TrimPrefix(ImageStatus_name[int32(s)], "IMAGE_STATUS_"))
	}
	return w
}()

// statusWordList is the valid words in the enum's order, for messages.
var statusWordList = func() string {
	words := make([]string, len(statusList))
	for i, s := range statusList {
		words[i] = statusWords[s]
	}
	return strings.Join(words, ", ")
}()

// Statuses lists every valid status, in the enum's order.
func Statuses() []ImageStatus { return append([]ImageStatus(nil), statusList...) }

// StatusWords returns the valid status words in the enum's order, joined
// by ", ": "available, absent, ..., unknown". For help texts and errors.
func StatusWords() string { return statusWordList }

// Word returns the status word ("available", "rate_limited", ...), or ""
// for IMAGE_STATUS_UNSPECIFIED and values this build does not know.
func (s ImageStatus) Word() string {
	if s < 0 || int(s) >= statusSlots {
		return ""
	}
	return statusWords[s]
}

// Valid reports whether s is a status this build knows, other than UNSPECIFIED.
func (s ImageStatus) Valid() bool { return s.Word() != "" }

// ParseStatus turns a status word back into the enum.
func ParseStatus(word string) (ImageStatus, error) {
	for _, s := range statusList {
		if statusWords[s] == word {
			return s, nil
		}
	}
	return ImageStatus_IMAGE_STATUS_UNSPECIFIED, fmt.Errorf("unknown image status %q (want one of %s)", word, statusWordList)
}

// MarshalText writes the status word, so that JSON (and slog) show
// "available" rather than a number. UNSPECIFIED is written as "".
func (s ImageStatus) MarshalText() ([]byte, error) { return marshalWord(s, "image status") }

// UnmarshalText reads a status word; "" is UNSPECIFIED.
func (s *ImageStatus) UnmarshalText(text []byte) error { return unmarshalWord(s, text, ParseStatus) }

// word is an enum of this package with words.
type word interface {
	~int32
	Word() string
}

// marshalWord writes v's word, "" for the zero value (UNSPECIFIED).
func marshalWord[T word](v T, what string) ([]byte, error) {
	if v == 0 {
		return []byte{}, nil
	}
	w := v.Word()
	if w == "" {
		return nil, fmt.Errorf("%s %d is not one this build knows", what, int32(v))
	}
	return []byte(w), nil
}

// unmarshalWord reads a word into dst with parse; "" is the zero value.
func unmarshalWord[T word](dst *T, text []byte, parse func(string) (T, error)) error {
	if len(text) == 0 {
		*dst = 0
		return nil
	}
	v, err := parse(string(text))
	if err != nil {
		return err
	}
	*dst = v
	return nil
}

// statusRanks orders statuses from best (available, 0) to worst; see Rank.
var statusRanks = [statusSlots]int{
	ImageStatus_IMAGE_STATUS_AVAILABLE:        0,
	ImageStatus_IMAGE_STATUS_UNKNOWN:          1,
	ImageStatus_IMAGE_STATUS_RATE_LIMITED:     2,
	ImageStatus_IMAGE_STATUS_UNREACHABLE:      3,
	ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT: 4,
	ImageStatus_IMAGE_STATUS_PLATFORM_MISSING: 5,
	ImageStatus_IMAGE_STATUS_UNAUTHORIZED:     6,
	ImageStatus_IMAGE_STATUS_FORBIDDEN:        7,
	ImageStatus_IMAGE_STATUS_ABSENT:           8,
}

// Rank orders statuses from best (available, 0) to worst. A definite
// answer about the image ranks worse than a failure that may pass on the
// next try, and unknown ranks lowest among failures because it carries
// the least information:
//
//	available < unknown < rate_limited < unreachable < bad_image_format <
//	platform_missing < unauthorized < forbidden < absent
//
// UNSPECIFIED and statuses this build does not know rank with unknown.
func (s ImageStatus) Rank() int {
	if !s.Valid() {
		return statusRanks[ImageStatus_IMAGE_STATUS_UNKNOWN]
	}
	return statusRanks[s]
}

// Worse reports whether s ranks worse than t.
func (s ImageStatus) Worse(t ImageStatus) bool { return s.Rank() > t.Rank() }

// Stated reports whether s is a failure the registry stated about the
// image itself, having been reached: absent, unauthorized, forbidden,
// platform_missing or bad_image_format. Such failures lie with the image
// (the "image" scope), not with the way to the registry.
func (s ImageStatus) Stated() bool {
	switch s {
	case ImageStatus_IMAGE_STATUS_ABSENT,
		ImageStatus_IMAGE_STATUS_UNAUTHORIZED,
		ImageStatus_IMAGE_STATUS_FORBIDDEN,
		ImageStatus_IMAGE_STATUS_PLATFORM_MISSING,
		ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT:
		return true
	}
	return false
}

// Answered reports whether an endpoint's result, its status s and the HTTP
// status code it got (0 when none), means the registry sent a response. An
// HTTP status proves it; without one, every valid status except
// unreachable and unknown still describes an answer (absent is a 404,
// rate_limited a 429 the agent is still backing off from, ...).
func Answered(s ImageStatus, httpStatus int) bool {
	if httpStatus != 0 {
		return true
	}
	switch s {
	case ImageStatus_IMAGE_STATUS_UNREACHABLE, ImageStatus_IMAGE_STATUS_UNKNOWN:
		return false
	}
	return s.Valid()
}

// Answered reports whether the endpoint sent any response; see the
// function Answered.
func (ep *EndpointResult) Answered() bool {
	return Answered(ep.GetStatus(), int(ep.GetHttpStatus()))
}

// compatFamilies are k8s-image-availability-exporter's metric families
// (k8s_image_availability_exporter_<family>), in its order.
var compatFamilies = []string{
	"available", "absent", "bad_image_format", "registry_unavailable",
	"authentication_failure", "authorization_failure", "unknown_error",
}

// compatOf[s] indexes compatFamilies.
var compatOf = [statusSlots]int{
	ImageStatus_IMAGE_STATUS_UNSPECIFIED:      6,
	ImageStatus_IMAGE_STATUS_AVAILABLE:        0,
	ImageStatus_IMAGE_STATUS_ABSENT:           1,
	ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT: 2,
	ImageStatus_IMAGE_STATUS_PLATFORM_MISSING: 2,
	ImageStatus_IMAGE_STATUS_UNREACHABLE:      3,
	ImageStatus_IMAGE_STATUS_UNAUTHORIZED:     4,
	ImageStatus_IMAGE_STATUS_FORBIDDEN:        5,
	ImageStatus_IMAGE_STATUS_RATE_LIMITED:     6,
	ImageStatus_IMAGE_STATUS_UNKNOWN:          6,
}

// CompatFamilies lists k8s-image-availability-exporter's status families
// in its order: available, absent, bad_image_format, registry_unavailable,
// authentication_failure, authorization_failure, unknown_error.
func CompatFamilies() []string { return append([]string(nil), compatFamilies...) }

// CompatFamily returns the index in CompatFamilies of the family
// k8s-image-availability-exporter would report s in: available→available,
// absent→absent, bad_image_format and platform_missing→bad_image_format,
// unreachable→registry_unavailable, unauthorized→authentication_failure,
// forbidden→authorization_failure, rate_limited, unknown and anything
// else→unknown_error.
func (s ImageStatus) CompatFamily() int {
	if s < 0 || int(s) >= statusSlots {
		return compatOf[ImageStatus_IMAGE_STATUS_UNKNOWN]
	}
	return compatOf[s]
}

// roleWords[r] is the word of role r; "" for UNSPECIFIED.
var roleWords = [...]string{
	EndpointRole_ENDPOINT_ROLE_UPSTREAM: "upstream",
	EndpointRole_ENDPOINT_ROLE_MIRROR:   "mirror",
}

// Word returns "upstream" or "mirror", or "" for UNSPECIFIED and unknown values.
func (r EndpointRole) Word() string {
	if r < 0 || int(r) >= len(roleWords) {
		return ""
	}
	return roleWords[r]
}

// ParseRole turns "upstream" or "mirror" back into the enum.
func ParseRole(word string) (EndpointRole, error) {
	for r, w := range roleWords {
		if w != "" && w == word {
			return EndpointRole(r), nil
		}
	}
	return EndpointRole_ENDPOINT_ROLE_UNSPECIFIED, fmt.Errorf("unknown endpoint role %q (want upstream or mirror)", word)
}

// MarshalText writes the role word; UNSPECIFIED is written as "".
func (r EndpointRole) MarshalText() ([]byte, error) { return marshalWord(r, "endpoint role") }

// UnmarshalText reads a role word; "" is UNSPECIFIED.
func (r *EndpointRole) UnmarshalText(text []byte) error { return unmarshalWord(r, text, ParseRole) }
