package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pullwatch/pullwatch/agent/pkg/discovery"
	"github.com/pullwatch/pullwatch/agent/pkg/stream"
	"github.com/pullwatch/pullwatch/pkg/envflag"
	"github.com/pullwatch/pullwatch/pkg/tlsfiles"
)

// The paths deploy/daemonset.yaml mounts: the projected ServiceAccount
// token (audience pullwatch) and the ConfigMap with the aggregator's CA.
const (
	DefaultTokenFile = "/var/run/secrets/pullwatch/token"
	DefaultCAFile    = "/etc/pullwatch/ca/ca.crt"
)

// transportFlags are how the agent's stream is secured.
type transportFlags struct {
	tokenFile  string
	caFile     string
	serverName string
	insecure   bool
}

func (t *transportFlags) register(s *envflag.Set) {
	s.StringVar(&t.tokenFile, "token-file", DefaultTokenFile,
		"`file` with the pod's projected ServiceAccount token (audience pullwatch), sent on every stream as 'authorization: Bearer' and read again for each new stream, "+
			"so the kubelet's rotated token is used. Empty: send none (an aggregator with --auth=none).")
	s.StringVar(&t.caFile, "ca-file", DefaultCAFile,
		"PEM `file` of the CA that signed the aggregator's certificate (the pullwatch-aggregator-ca ConfigMap's ca.crt in deploy/); read again when it changes.")
	s.StringVar(&t.serverName, "tls-server-name", "",
		"The `name` the aggregator's certificate must carry. Default: SERVICE.NAMESPACE.svc for a kubernetes:/// --aggregator (the agent dials pod addresses, "+
			"which the certificate does not name), else the HOST of --aggregator.")
	s.BoolVar(&t.insecure, "insecure", false,
		"Connect to the aggregator without TLS (an aggregator with --insecure, in a lab). The token, if --token-file exists, then crosses the network in plaintext. Only when said.")
}

// dialOptions returns the stream's transport and per-RPC credentials.
func (t *transportFlags) dialOptions(log *slog.Logger, aggregator string) ([]grpc.DialOption, error) {
	var opts []grpc.DialOption
	if t.insecure {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
		log.Warn("connecting to the aggregator without TLS (--insecure)")
	} else {
		ca, err := tlsfiles.LoadCAPool(t.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w (mount the aggregator's CA there, see docs/security.md, or use --insecure against an aggregator without TLS)", err)
		}
		name := t.serverName
		if name == "" && discovery.IsTarget(aggregator) {
			target, err := discovery.ParseTarget(aggregator)
			if err != nil {
				return nil, fmt.Errorf("--aggregator: %w", err)
			}
			name = target.ServerName()
		}
		opts = append(opts, grpc.WithTransportCredentials(stream.NewServerTLS(ca, name)))
		log.Info("aggregator verified with TLS", "ca_file", t.caFile, "server_name", name)
	}
	switch _, err := os.Stat(t.tokenFile); {
	case t.tokenFile == "":
		log.Info("no --token-file: streams carry no token (for an aggregator with --auth=none)")
	case t.insecure && errors.Is(err, fs.ErrNotExist):
		log.Info("no token file: streams carry no token", "token_file", t.tokenFile)
	default:
		// Without TLS the token is sent only because --insecure was said.
		opts = append(opts, grpc.WithPerRPCCredentials(stream.TokenFile{Path: t.tokenFile, Insecure: t.insecure}))
		log.Info("streams carry the ServiceAccount token", "token_file", t.tokenFile)
	}
	return opts, nil
}
