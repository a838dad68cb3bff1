package pullwatchv1

import "strings"

// ProbeKeyString is the one spelling of a probe sharding key (ProbeKey):
// the reference, the credential source and the endpoint URLs in the
// runtime's order, NUL-separated. The aggregator groups nodes by it and
// the agent matches its delegated images with it.
func ProbeKeyString(image, credentialSource string, endpoints []string) string {
	var b strings.Builder
	b.WriteString(image)
	b.WriteByte(0)
	b.WriteString(credentialSource)
	for _, e := range endpoints {
		b.WriteByte(0)
		b.WriteString(e)
	}
	return b.String()
}

// KeyString is the key's ProbeKeyString.
func (k *ProbeKey) KeyString() string {
	return ProbeKeyString(k.GetImage(), k.GetCredentialSource(), k.GetEndpoints())
}

// ProbeKeyOf is the key of an image report: its reference, credential
// source and endpoint URLs.
func ProbeKeyOf(im *ImageReport) string {
	urls := make([]string, len(im.GetEndpoints()))
	for i, e := range im.GetEndpoints() {
		urls[i] = e.GetUrl()
	}
	return ProbeKeyString(im.GetImage(), im.GetCredentialSource(), urls)
}

// ProbeKeyFromString is the inverse of ProbeKeyString.
func ProbeKeyFromString(s string) *ProbeKey {
	parts := strings.Split(s, "\x00")
	k := &ProbeKey{Image: parts[0]}
	if len(parts) > 1 {
		k.CredentialSource = parts[1]
	}
	if len(parts) > 2 {
		k.Endpoints = parts[2:]
	}
	return k
}
