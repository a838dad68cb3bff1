package pullwatchv1

import (
	"fmt"
	"strings"
)

// The status words are the contract users see in JSON, metrics and the
// status page. They are the enum names without the IMAGE_STATUS_ prefix,
// lowercased. Keep this list in the enum's order.
var statusWords = []ImageStatus{
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

// Statuses lists every valid status, in the enum's order.
func Statuses() []ImageStatus { return append([]ImageStatus(nil), statusWords...) }

// Word returns the status word ("available", "rate_limited", ...), or ""
// for IMAGE_STATUS_UNSPECIFIED and values this build does not know.
func (s ImageStatus) Word() string {
	if !s.Valid() {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "IMAGE_STATUS_"))
}

// Valid reports whether s is a status this build knows, other than UNSPECIFIED.
func (s ImageStatus) Valid() bool {
	_, known := ImageStatus_name[int32(s)]
	return known && s != ImageStatus_IMAGE_STATUS_UNSPECIFIED
}

// ParseStatus turns a status word back into the enum.
func ParseStatus(word string) (ImageStatus, error) {
	v, ok := ImageStatus_value["IMAGE_STATUS_"+strings.ToUpper(word)]
	if !ok || v == 0 || strings.ToLower(word) != word {
		return ImageStatus_IMAGE_STATUS_UNSPECIFIED, fmt.Errorf("unknown image status %q (want one of available, absent, unauthorized, forbidden, rate_limited, unreachable, platform_missing, bad_image_format, unknown)", word)
	}
	return ImageStatus(v), nil
}

// Word returns "upstream" or "mirror", or "" for UNSPECIFIED and unknown values.
func (r EndpointRole) Word() string {
	if _, known := EndpointRole_name[int32(r)]; !known || r == EndpointRole_ENDPOINT_ROLE_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(r.String(), "ENDPOINT_ROLE_"))
}

// ParseRole turns "upstream" or "mirror" back into the enum.
func ParseRole(word string) (EndpointRole, error) {
	v, ok := EndpointRole_value["ENDPOINT_ROLE_"+strings.ToUpper(word)]
	if !ok || v == 0 || strings.ToLower(word) != word {
		return EndpointRole_ENDPOINT_ROLE_UNSPECIFIED, fmt.Errorf("unknown endpoint role %q (want upstream or mirror)", word)
	}
	return EndpointRole(v), nil
}
