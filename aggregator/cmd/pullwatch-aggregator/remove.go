package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/pullwatch/pullwatch/aggregator/pkg/nodecondition"
	"github.com/pullwatch/pullwatch/aggregator/pkg/options"
	"github.com/pullwatch/pullwatch/pkg/kubeapi"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// removeCommandName is the subcommand that takes the RegistryReachable
// condition off every Node: the chart's pre-delete hook runs it, and so
// can a user of deploy/ (docs/install.md, "Uninstall").
const removeCommandName = "remove-node-condition"

// removeNodeCondition runs `pullwatch-aggregator remove-node-condition`:
// stop the aggregator Deployment (so nothing writes the condition again),
// then remove the condition from every Node. It returns the exit code.
func removeNodeCondition(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(options.Name+" "+removeCommandName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig path (default: in-cluster, else $KUBECONFIG)")
	stopDeployment := fs.String("stop-deployment", "", "NAMESPACE/NAME of the aggregator Deployment to scale to zero (and wait for) first; empty: none")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s %s [flags]\n\nRemove the %s condition --node-condition set from every Node (uninstall).\n\nFlags:\n", options.Name, removeCommandName, nodecondition.Type)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	log := logging.New(stderr, slog.LevelInfo, "json")
	cfg, err := kubeapi.Load(*kubeconfig)
	if err != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", options.Name, removeCommandName, err)
		return exitUsage
	}
	kube, err := kubernetes.NewForConfig(cfg.Rest)
	if err != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", options.Name, removeCommandName, err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *stopDeployment != "" {
		ns, name, ok := strings.Cut(*stopDeployment, "/")
		if !ok || ns == "" || name == "" {
			fmt.Fprintf(stderr, "%s %s: --stop-deployment %q: want NAMESPACE/NAME\n", options.Name, removeCommandName, *stopDeployment)
			return exitUsage
		}
		if err := nodecondition.StopDeployment(ctx, kube, log, ns, name); err != nil {
			log.Error("aggregator not stopped", logging.ErrKey, err)
			return exitFailure
		}
	}
	removed, err := nodecondition.Remove(ctx, kube, log)
	fmt.Fprintf(stdout, "%s removed from %d nodes\n", nodecondition.Type, len(removed))
	if err != nil {
		log.Error("node condition not removed everywhere", logging.ErrKey, err)
		return exitFailure
	}
	return 0
}
