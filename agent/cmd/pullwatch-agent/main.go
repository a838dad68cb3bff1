// Command pullwatch-agent tells which images this node can no longer pull,
// and why. See 'pullwatch-agent --help'.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pullwatch/pullwatch/agent/pkg/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.OSEnv())
	stop()
	os.Exit(code)
}
