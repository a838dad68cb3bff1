package registry

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
)

// Access is one request in the registry's access log.
type Access struct {
	Source    string // the client's address, as the log gives it
	Method    string
	Path      string
	Status    string
	UserAgent string
}

// accessLine is the access log line (combined log format): source,
// method, path, status, user agent.
var accessLine = regexp.MustCompile(`^(\S+) - \S+ \[[^\]]+\] "(\w+) (\S+) HTTP/[0-9.]+" (\d{3}) \S+ "[^"]*" "([^"]*)"`)

// LogOffset is where the registry's log ends now: requests logged after
// it are read with Accesses.
func (r *Registry) LogOffset() (int64, error) {
	st, err := os.Stat(r.logPath)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Accesses returns the requests logged from byte offset from up to until
// (< 0: the end), and the offset after the last line read.
func (r *Registry) Accesses(from, until int64) ([]Access, int64, error) {
	f, err := os.Open(r.logPath)
	if err != nil {
		return nil, from, err
	}
	defer f.Close()
	if _, err := f.Seek(from, 0); err != nil {
		return nil, from, fmt.Errorf("registry log %s: %w", r.logPath, err)
	}
	var out []Access
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := from
	for (until < 0 || n < until) && sc.Scan() {
		n += int64(len(sc.Bytes())) + 1
		if m := accessLine.FindStringSubmatch(sc.Text()); m != nil {
			out = append(out, Access{Source: m[1], Method: m[2], Path: m[3], Status: m[4], UserAgent: m[5]})
		}
	}
	return out, n, sc.Err()
}
