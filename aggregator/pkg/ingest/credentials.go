package ingest

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
)

// Lender answers ReportService.Credentials (aggregator/pkg/lend).
type Lender interface {
	Credentials(ctx context.Context, req *pullwatchv1.CredentialsRequest) (*pullwatchv1.CredentialsResponse, error)
}

// SetLender makes the server answer Credentials with l; before it is
// called (and with nil), Credentials answers FailedPrecondition.
func (s *Server) SetLender(l Lender) { s.lender = l }

// Credentials implements ReportService.Credentials by handing the request
// to the Lender.
func (s *Server) Credentials(ctx context.Context, req *pullwatchv1.CredentialsRequest) (*pullwatchv1.CredentialsResponse, error) {
	if s.lender == nil {
		return nil, status.Error(codes.FailedPrecondition, "this aggregator lends no credentials")
	}
	return s.lender.Credentials(ctx, req)
}
