package ca

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// IssueAdmin signs an operator's CSR as an admin certificate named name
// and records it in the cluster object, which is what makes the
// authorizer accept it. validity 0 means identity.DefaultAdminValidity.
// Records of certificates that have expired are dropped in the same
// write, so the list stays as long as the set of usable certificates.
func IssueAdmin(ctx context.Context, r Raft, name string, csrPEM []byte, validity time.Duration) (certPEM []byte, rec *api.AdminCertificate, err error) {
	for attempt := 1; ; attempt++ {
		c, err := clusterOf(r)
		if err != nil {
			return nil, nil, err
		}
		var nodes []*api.Node
		r.Store().View(func(tx store.ReadTx) { nodes = tx.Nodes() })
		// Operators are issued like managers: by the new root only once
		// every worker trusts it, so that the certificate works wherever
		// it is shown.
		signer, err := identity.ParseRootCA(issuerFor(c, nodes, api.NodeRole_NODE_ROLE_MANAGER))
		if err != nil {
			return nil, nil, status.Errorf(codes.Internal, "cluster CA: %v", err)
		}
		certPEM, cert, err := signer.IssueAdminCSR(csrPEM, name, validity)
		if err != nil {
			return nil, nil, status.Error(codes.InvalidArgument, err.Error())
		}
		rec = identity.AdminRecord(cert)
		upd := proto.Clone(c).(*api.Cluster)
		upd.AdminCertificates = append(unexpired(upd.GetAdminCertificates(), time.Now()), rec)
		err = r.Propose(ctx, store.Update(upd))
		if errors.Is(err, store.ErrSequenceConflict) && attempt < updateAttempts {
			continue
		}
		if err != nil {
			return nil, nil, state.ToStatus(fmt.Errorf("record admin certificate %s: %w", name, err))
		}
		return certPEM, rec, nil
	}
}

// RevokeAdmin removes from the record the admin certificates ref names: a
// serial, a unique serial prefix, or a name (all certificates of that
// name). Refusing to revoke the last one would lock nobody out (the local
// socket of every manager is admin), so it is allowed.
func RevokeAdmin(ctx context.Context, r Raft, ref string) ([]*api.AdminCertificate, error) {
	if ref == "" {
		return nil, status.Error(codes.InvalidArgument, "certificate: give a serial, a serial prefix or a name")
	}
	for attempt := 1; ; attempt++ {
		c, err := clusterOf(r)
		if err != nil {
			return nil, err
		}
		var kept, revoked []*api.AdminCertificate
		for _, rec := range c.GetAdminCertificates() {
			if rec.GetName() == ref || rec.GetSerial() == ref {
				revoked = append(revoked, rec)
			} else {
				kept = append(kept, rec)
			}
		}
		if len(revoked) == 0 {
			kept = kept[:0]
			for _, rec := range c.GetAdminCertificates() {
				if strings.HasPrefix(rec.GetSerial(), strings.ToLower(ref)) {
					revoked = append(revoked, rec)
				} else {
					kept = append(kept, rec)
				}
			}
			if len(revoked) > 1 {
				return nil, status.Errorf(codes.InvalidArgument, "certificate %q: the prefix matches %d serials; give more of it", ref, len(revoked))
			}
		}
		if len(revoked) == 0 {
			return nil, status.Errorf(codes.NotFound, "no admin certificate has serial or name %q: see `shoalctl cluster admin-cert ls`", ref)
		}
		upd := proto.Clone(c).(*api.Cluster)
		upd.AdminCertificates = kept
		err = r.Propose(ctx, store.Update(upd))
		if errors.Is(err, store.ErrSequenceConflict) && attempt < updateAttempts {
			continue
		}
		if err != nil {
			return nil, state.ToStatus(fmt.Errorf("revoke admin certificate %q: %w", ref, err))
		}
		return revoked, nil
	}
}

func unexpired(recs []*api.AdminCertificate, now time.Time) []*api.AdminCertificate {
	var out []*api.AdminCertificate
	for _, rec := range recs {
		if rec.GetNotAfter().AsTime().After(now) {
			out = append(out, rec)
		}
	}
	return out
}

func clusterOf(r Raft) (*api.Cluster, error) {
	var c *api.Cluster
	r.Store().View(func(tx store.ReadTx) { c = tx.Cluster() })
	if c == nil {
		return nil, status.Error(codes.FailedPrecondition, "the cluster is not initialised yet")
	}
	if len(c.GetRootCa().GetCertPem()) == 0 {
		return nil, status.Error(codes.FailedPrecondition, "the cluster has no CA")
	}
	return c, nil
}
