package ingest

import (
	"testing"

	"go.uber.org/goleak"
)

// Every stream's receive goroutine, and every server and client the tests
// start, ends by the end of the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
