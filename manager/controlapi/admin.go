package controlapi

import (
	"context"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/store"
)

// adminOnly refuses callers that are not operators: a manager certificate
// may call the control API to forward writes, but has no business with
// operators' credentials.
func adminOnly(ctx context.Context, what string) error {
	if !isAdmin(ctx) {
		return status.Errorf(codes.PermissionDenied, "%s is for admins only: use the local socket on a manager or an admin certificate", what)
	}
	return nil
}

// IssueAdminCertificate signs and records an operator's certificate.
func (s *Server) IssueAdminCertificate(ctx context.Context, req *api.IssueAdminCertificateRequest) (*api.IssueAdminCertificateResponse, error) {
	if err := adminOnly(ctx, "issuing admin certificates"); err != nil {
		return nil, err
	}
	validity := req.GetValidity().AsDuration()
	if req.GetValidity() != nil && validity <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "validity %v: want a positive duration", validity)
	}
	certPEM, rec, err := ca.IssueAdmin(ctx, s.raft, req.GetName(), req.GetCsrPem(), validity)
	if err != nil {
		return nil, err
	}
	var c *api.Cluster
	s.view(func(tx store.ReadTx) { c = tx.Cluster() })
	return &api.IssueAdminCertificateResponse{CertPem: certPEM, CaCertPem: ca.TrustPEM(c), Certificate: rec}, nil
}

// ListAdminCertificates lists the admin certificates the cluster accepts
// (expired ones excluded), by name then expiry.
func (s *Server) ListAdminCertificates(ctx context.Context, _ *api.ListAdminCertificatesRequest) (*api.ListAdminCertificatesResponse, error) {
	if err := adminOnly(ctx, "listing admin certificates"); err != nil {
		return nil, err
	}
	var c *api.Cluster
	s.view(func(tx store.ReadTx) { c = tx.Cluster() })
	var out []*api.AdminCertificate
	now := s.now()
	for _, rec := range c.GetAdminCertificates() {
		if rec.GetNotAfter().AsTime().After(now) {
			out = append(out, rec)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetName() != out[j].GetName() {
			return out[i].GetName() < out[j].GetName()
		}
		return out[i].GetNotAfter().AsTime().Before(out[j].GetNotAfter().AsTime())
	})
	return &api.ListAdminCertificatesResponse{Certificates: out}, nil
}

// RevokeAdminCertificate removes admin certificates from the record.
func (s *Server) RevokeAdminCertificate(ctx context.Context, req *api.RevokeAdminCertificateRequest) (*api.RevokeAdminCertificateResponse, error) {
	if err := adminOnly(ctx, "revoking admin certificates"); err != nil {
		return nil, err
	}
	revoked, err := ca.RevokeAdmin(ctx, s.raft, req.GetCertificate())
	if err != nil {
		return nil, err
	}
	return &api.RevokeAdminCertificateResponse{Revoked: revoked}, nil
}

// RotateRootCA starts a root CA rotation (see package ca); the nodes and
// the leader's rotation controller carry it out.
func (s *Server) RotateRootCA(ctx context.Context, _ *api.RotateRootCARequest) (*api.RotateRootCAResponse, error) {
	if err := adminOnly(ctx, "rotating the root CA"); err != nil {
		return nil, err
	}
	root, err := ca.StartRotation(ctx, s.raft)
	if err != nil {
		return nil, err
	}
	return &api.RotateRootCAResponse{Digest: root.GetDigest()}, nil
}
