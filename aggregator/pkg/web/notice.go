package web

// WithNotices has the page show each notice at its top (what protection
// is off, for example --auth=none); p is returned.
func (p *StatusPage) WithNotices(notices ...string) *StatusPage {
	p.notices = append(p.notices, notices...)
	return p
}
