package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// Root CA rotation (`shoalctl cluster ca --rotate`), in the store's terms
// (api.RootRotation):
//
//  1. StartRotation makes a new root and records it beside the old one.
//     From then on every member trusts both (TrustPEM): managers read it
//     from their store (FollowTrust), other nodes get it with their next
//     certificate, and the dispatcher asks each node to renew until it
//     holds what NeedsRenewal wants.
//  2. Workers are re-issued by the new root at once. Managers (and admin
//     certificates) are re-issued by it only when every worker has been:
//     a worker that has not renewed yet trusts only the old root and must
//     still be able to verify the managers it dials.
//  3. When every node holds a certificate of the new root, FinishRotation
//     makes it the root, drops the old one and remakes the join tokens
//     for the new digest. Every node then renews once more and is given
//     the new root alone: the old root leaves every node's trust, and a
//     certificate it signed is refused everywhere.
//
// Swarm instead cross-signs the new root with the old key, so that nodes
// trusting only the old root accept the new certificates at once. Our
// roots are made with path length 0 (no intermediates), so a chain
// through a cross-signed intermediate would not verify; trusting both
// roots for the transition gives the same property in both directions,
// and the order of step 2 covers the nodes that do not trust both yet.

// TrustPEM is the CA certificates every member and operator must trust
// now, PEM, one after the other: the root, and during a rotation the new
// root too.
func TrustPEM(c *api.Cluster) []byte {
	out := append([]byte{}, c.GetRootCa().GetCertPem()...)
	if rot := c.GetCaRotation(); rot != nil {
		out = append(out, rot.GetNewRoot().GetCertPem()...)
	}
	return out
}

// TrustDigest names TrustPEM(c): what a node's certificate record says
// it was given.
func TrustDigest(c *api.Cluster) string { return identity.Digest(TrustPEM(c)) }

// issuerFor is the stored CA that signs a certificate of role now (see
// the steps above).
func issuerFor(c *api.Cluster, nodes []*api.Node, role api.NodeRole) *api.RootCA {
	rot := c.GetCaRotation()
	if rot == nil {
		return c.GetRootCa()
	}
	if role == api.NodeRole_NODE_ROLE_MANAGER && !workersMoved(rot, nodes) {
		return c.GetRootCa()
	}
	return rot.GetNewRoot()
}

// workersMoved reports whether every node holding a worker certificate
// holds one of the new root.
func workersMoved(rot *api.RootRotation, nodes []*api.Node) bool {
	for _, n := range nodes {
		rec := n.GetCertificate()
		if rec.GetRole() != api.NodeRole_NODE_ROLE_MANAGER && rec.GetIssuer() != rot.GetNewRoot().GetDigest() {
			return false
		}
	}
	return true
}

// NeedsRenewal reports whether node n should renew its certificate now
// for a CA rotation: it does not trust what the cluster trusts, or its
// certificate is not from the CA that would sign it now. Outside a
// rotation only the first can hold (after one: the old root is still in
// the node's trust); records from before rotation existed are left alone.
// nodes lists every node; it is called only when needed (a manager during
// a rotation), since the dispatcher asks on every heartbeat.
func NeedsRenewal(c *api.Cluster, nodes func() []*api.Node, n *api.Node) bool {
	rec := n.GetCertificate()
	if rec == nil || len(c.GetRootCa().GetCertPem()) == 0 {
		return false
	}
	if c.GetCaRotation() == nil {
		return rec.GetTrust() != "" && rec.GetTrust() != TrustDigest(c)
	}
	if rec.GetTrust() != TrustDigest(c) {
		return true
	}
	if rec.GetIssuer() == c.GetCaRotation().GetNewRoot().GetDigest() {
		return false
	}
	return rec.GetIssuer() != issuerFor(c, nodes(), rec.GetRole()).GetDigest()
}

// RotationProgress counts the nodes holding a certificate of the new
// root, of all nodes.
func RotationProgress(c *api.Cluster, nodes []*api.Node) (moved, total int) {
	for _, n := range nodes {
		if n.GetCertificate().GetIssuer() == c.GetCaRotation().GetNewRoot().GetDigest() {
			moved++
		}
	}
	return moved, len(nodes)
}

// StartRotation makes a new root CA and records it as the rotation in
// progress. It refuses while another is in progress.
func StartRotation(ctx context.Context, r Raft) (*api.RootCA, error) {
	for attempt := 1; ; attempt++ {
		c, err := clusterOf(r)
		if err != nil {
			return nil, err
		}
		if rot := c.GetCaRotation(); rot != nil {
			var nodes []*api.Node
			r.Store().View(func(tx store.ReadTx) { nodes = tx.Nodes() })
			moved, total := RotationProgress(c, nodes)
			return nil, status.Errorf(codes.FailedPrecondition, "a CA rotation to %s is in progress (%d of %d nodes have a certificate of the new root): wait for it to end; a node that stays down holds it up, remove it with `shoalctl node rm`", rot.GetNewRoot().GetDigest(), moved, total)
		}
		root, err := identity.NewRootCA(c.GetId())
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		upd := proto.Clone(c).(*api.Cluster)
		upd.CaRotation = &api.RootRotation{NewRoot: root, StartedAt: timestamppb.Now()}
		err = r.Propose(ctx, store.Update(upd))
		if errors.Is(err, store.ErrSequenceConflict) && attempt < updateAttempts {
			continue
		}
		if err != nil {
			return nil, state.ToStatus(fmt.Errorf("start CA rotation: %w", err))
		}
		return root, nil
	}
}

// FinishRotation ends the rotation in progress if every node holds a
// certificate of the new root (step 3), and reports whether it did.
func FinishRotation(ctx context.Context, r Raft) (bool, error) {
	for attempt := 1; ; attempt++ {
		var (
			c     *api.Cluster
			nodes []*api.Node
		)
		r.Store().View(func(tx store.ReadTx) {
			c = tx.Cluster()
			nodes = tx.Nodes()
		})
		rot := c.GetCaRotation()
		if rot == nil {
			return false, nil
		}
		if moved, total := RotationProgress(c, nodes); moved < total {
			return false, nil
		}
		tokens, err := identity.NewJoinTokens(rot.GetNewRoot().GetDigest())
		if err != nil {
			return false, err
		}
		upd := proto.Clone(c).(*api.Cluster)
		upd.RootCa = rot.GetNewRoot()
		upd.CaRotation = nil
		upd.JoinTokens = tokens
		err = r.Propose(ctx, store.Update(upd))
		if errors.Is(err, store.ErrSequenceConflict) && attempt < updateAttempts {
			continue
		}
		if err != nil {
			return false, state.ToStatus(fmt.Errorf("finish CA rotation: %w", err))
		}
		return true, nil
	}
}

// FollowTrust keeps trust equal to what the cluster trusts (TrustPEM), as
// the store changes, until ctx ends: a manager's listener and dialers
// accept the new root the moment a rotation starts, and stop accepting
// the old one the moment it ends.
func FollowTrust(ctx context.Context, st *store.Store, trust *identity.Trust, logger *slog.Logger) {
	sub := st.Subscribe()
	defer sub.Close()
	var last string
	for {
		var c *api.Cluster
		st.View(func(tx store.ReadTx) { c = tx.Cluster() })
		if c != nil && len(c.GetRootCa().GetCertPem()) > 0 {
			if d := TrustDigest(c); d != last {
				if err := trust.Set(TrustPEM(c)); err != nil {
					logger.Error("trust the cluster's CAs", "err", err)
				} else {
					last = d
					logger.Info("trusted CAs changed", "trust", d, "rotating", c.GetCaRotation() != nil)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-sub.Ready():
			sub.Next()
		}
	}
}
