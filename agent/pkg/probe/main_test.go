package probe

import (
	"testing"

	"go.uber.org/goleak"
)

// The prober starts goroutines (token requests shared through
// singleflight, probes waiting on slots and canaries): none may outlive
// the tests. Idle keep-alive connections of the HTTP transports are not
// the prober's and close on their own.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}
