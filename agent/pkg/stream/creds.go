package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"

	"github.com/pullwatch/pullwatch/pkg/tlsfiles"
)

// TokenFile is the gRPC per-RPC credential of the agent's stream: the
// pod's projected ServiceAccount token (audience pullwatch), sent as
// "authorization: Bearer <token>". The file is read again for every new
// stream, so the token the kubelet rotates into it is the one sent.
type TokenFile struct {
	Path string
	// Insecure lets the token go over a connection without TLS
	// (--insecure); otherwise gRPC refuses to send it in plaintext.
	Insecure bool
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t TokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(t.Path)
	if err != nil {
		return nil, fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("--token-file %s: %w", t.Path, errEmptyToken)
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

var errEmptyToken = errors.New("empty")

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (t TokenFile) RequireTransportSecurity() bool { return !t.Insecure }

// serverTLS verifies the aggregator against the CA file as it is at each
// handshake (so a rotated CA is trusted without a restart), as serverName
// — the Service's DNS name: agents dial pod addresses found in
// EndpointSlices, which no certificate names. The handshake itself is
// gRPC's own TLS credentials'.
type serverTLS struct {
	ca         *tlsfiles.CAPool
	serverName string
}

// NewServerTLS returns transport credentials that verify the aggregator's
// certificate with the CA pool for serverName.
func NewServerTLS(ca *tlsfiles.CAPool, serverName string) credentials.TransportCredentials {
	return &serverTLS{ca: ca, serverName: serverName}
}

func (s *serverTLS) creds() credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: s.ca.Pool(), ServerName: s.serverName})
}

func (s *serverTLS) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return s.creds().ClientHandshake(ctx, authority, conn)
}

func (s *serverTLS) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("stream: client-side TLS credentials cannot serve")
}

func (s *serverTLS) Info() credentials.ProtocolInfo { return s.creds().Info() }

func (s *serverTLS) Clone() credentials.TransportCredentials {
	return &serverTLS{ca: s.ca, serverName: s.serverName}
}

// OverrideServerName implements the deprecated half of the interface.
func (s *serverTLS) OverrideServerName(name string) error {
	s.serverName = name
	return nil
}
