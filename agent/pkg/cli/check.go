package cli

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/pullwatch/pullwatch/pkg/envflag"
)

const checkSummary = `Checks every image this node runs or has cached, once, from this node's
network path, and prints the result: a table, or JSON with -o json.
Exit status: 0 when every image is available, 1 when any is not, 2 on a
usage or setup error (for example no CRI endpoint answering).`

func checkCommand(ctx context.Context, args []string, env Env) int {
	s := envflag.New("pullwatch-agent check", "pullwatch-agent check [flags]", checkSummary)
	var c common
	c.register(s, env)
	output := "table"
	s.Var(&envflag.Choice{Value: &output, Choices: []string{"table", "json"}}, "o", "Output `format`: table or json.")
	s.Env("o", "PULLWATCH_OUTPUT")
	if code, ok := parse(s, args, env, &c); !ok {
		return code
	}
	ctx, log := newLogger(ctx, env, &c)
	checker, client, err := c.setup(ctx, log)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent check: %v\n", err)
		return ExitSetup
	}
	defer client.Close()
	checker.Deadline = c.roundDeadline(0)
	node, err := checker.Run(ctx)
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent check: %v\n", err)
		return ExitSetup
	}
	if output == "json" {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(node)
	} else {
		err = node.WriteTable(env.Stdout)
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "pullwatch-agent check: write output: %v\n", err)
		return ExitSetup
	}
	if !node.AllAvailable() {
		return ExitUnavailable
	}
	return ExitOK
}
