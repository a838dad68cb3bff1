package cli

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/pullwatch/pullwatch/agent/pkg/credentials"
	"github.com/pullwatch/pullwatch/pkg/envflag"
	pb "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

const checkSummary = `Checks every image this node runs or has cached, once, from this node's
network path, and prints the result: a table, or JSON with -o json.
Exit status: 0 when every image is available, 1 when any is not, 2 on a
usage or setup error (for example no CRI endpoint answering).`

func checkCommand(ctx context.Context, args []string, env Env) int {
	s := envflag.New("pullwatch-agent check", "pullwatch-agent check [flags]", checkSummary)
	var c common
	c.register(s, env)
	var aggregator string
	s.StringVar(&aggregator, "aggregator", "", "gRPC `address` of pullwatch-aggregator (as run's --aggregator) to lend the imagePullSecrets of this node's pods. Empty: pull-secret lookup is off; the node keyring and credential provider plugins still count.")
	var transport transportFlags // with --aggregator: as run's stream
	transport.register(s)
	output := "table"
	s.Var(&envflag.Choice{Value: &output, Choices: []string{"table", "json"}}, "o", "Output `format`: table or json.")
	s.Env("o", "PULLWATCH_OUTPUT")
	if code, ok := parse(s, args, env, &c); !ok {
		return code
	}
	ctx, log := newLogger(ctx, env, &c)
	var lender credentials.Lender
	if aggregator != "" {
		// TLS and the token as run's streams have them (--ca-file,
		// --token-file), or plaintext with --insecure.
		security, err := transport.dialOptions(log, aggregator)
		if err != nil {
			fmt.Fprintf(env.Stderr, "pullwatch-agent check: %v\n", err)
			return ExitSetup
		}
		conn, err := c.dialLender(log, aggregator, security)
		if err != nil {
			fmt.Fprintf(env.Stderr, "pullwatch-agent check: %v\n", err)
			return ExitSetup
		}
		defer conn.Close()
		lender = pb.NewReportServiceClient(conn)
	}
	checker, client, err := c.setup(ctx, log, lender)
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
