package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager/store"
)

// policy says who may call a method. anyone includes callers without a
// certificate (joining nodes).
type policy struct {
	anyone bool
	roles  []identity.Role
}

func (p policy) allows(r identity.Role) bool {
	for _, x := range p.roles {
		if x == r {
			return true
		}
	}
	return false
}

// methodPolicies is the fixed table of who may call what, by full method
// name; servicePolicies covers every method of a service. Anything in
// neither is refused.
var (
	methodPolicies = map[string]policy{
		api.CA_GetRootCACertificate_FullMethodName: {anyone: true},
		api.CA_IssueNodeCertificate_FullMethodName: {anyone: true},
		api.CA_RenewNodeCertificate_FullMethodName: {roles: []identity.Role{identity.RoleWorker, identity.RoleManager}},
	}
	servicePolicies = map[string]policy{
		api.Control_ServiceDesc.ServiceName: {roles: []identity.Role{identity.RoleAdmin, identity.RoleManager}},
		// The dispatcher checks itself that a worker acts for its own node.
		api.Dispatcher_ServiceDesc.ServiceName:     {roles: []identity.Role{identity.RoleWorker, identity.RoleManager}},
		api.RaftMembership_ServiceDesc.ServiceName: {roles: []identity.Role{identity.RoleManager}},
	}
)

func policyFor(method string) (policy, bool) {
	if p, ok := methodPolicies[method]; ok {
		return p, true
	}
	// A full method is /<service>/<method>.
	rest, ok := strings.CutPrefix(method, "/")
	if !ok {
		return policy{}, false
	}
	svc, _, ok := strings.Cut(rest, "/")
	if !ok {
		return policy{}, false
	}
	p, ok := servicePolicies[svc]
	return p, ok
}

// Authorizer checks every RPC against the method table before its handler
// runs, and puts the caller's Identity in the handler's context.
type Authorizer struct {
	// Check, when set, runs for every caller that presents a certificate
	// and calls a method that needs one; it refuses certificates that are
	// valid but no longer current (see Checker).
	Check func(ctx context.Context, id identity.Identity) error
	// CheckRaft runs for every raft connection (see AuthorizeRaft and
	// RaftChecker); cert is the peer's verified leaf.
	CheckRaft func(ctx context.Context, id identity.Identity, cert *x509.Certificate) error
	// Local, when set, is the identity given to peers without TLS. Set it
	// only on the server for the node's unix socket (mode 0600, root
	// only); on the cluster port, peers without TLS are refused.
	Local *identity.Identity
	// Recheck is how often an open stream of an admin certificate is
	// checked again, so that revoking the certificate ends its watches
	// and followed logs too; 0 means DefaultRecheck.
	Recheck time.Duration
}

// DefaultRecheck is how often an admin's open stream is checked again.
const DefaultRecheck = 5 * time.Second

// revoked is the cause a stream's context is cancelled with when its
// caller's certificate fails a check after the stream opened.
type revoked struct{ err error }

func (r revoked) Error() string { return r.err.Error() }

// authorize decides whether the peer of ctx may call method, and returns
// ctx carrying its identity.
func (a Authorizer) authorize(ctx context.Context, method string) (context.Context, error) {
	pol, known := policyFor(method)
	if !known {
		return nil, status.Errorf(codes.PermissionDenied, "no caller may call %s", method)
	}
	var (
		id       identity.Identity
		haveID   bool
		local    bool
		tlsState *tls.ConnectionState
	)
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			tlsState = &info.State
		}
	}
	switch {
	case tlsState != nil && len(tlsState.VerifiedChains) > 0:
		var err error
		if id, err = identity.IdentityFromState(*tlsState); err != nil {
			return nil, err
		}
		haveID = true
	case tlsState != nil:
		// TLS without a client certificate: a joining node.
	case a.Local != nil:
		id, haveID, local = *a.Local, true, true
	default:
		return nil, status.Errorf(codes.Unauthenticated, "%s: connections without TLS are refused", method)
	}
	if pol.anyone {
		if haveID {
			ctx = identity.WithIdentity(ctx, id)
		}
		return ctx, nil
	}
	if !haveID {
		return nil, status.Errorf(codes.Unauthenticated, "%s needs a client certificate: join the cluster first, or use an admin certificate", method)
	}
	if !pol.allows(id.Role) {
		if local {
			return nil, status.Errorf(codes.PermissionDenied, "callers on the local socket may not call %s", method)
		}
		return nil, status.Errorf(codes.PermissionDenied, "%s certificates may not call %s", id.Role, method)
	}
	if !local && a.Check != nil {
		if err := a.Check(ctx, id); err != nil {
			if _, ok := status.FromError(err); ok {
				return nil, err
			}
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
	}
	return identity.WithIdentity(ctx, id), nil
}

// UnaryInterceptor authorizes unary calls.
func (a Authorizer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor authorizes streaming calls when they open; an admin's
// stream (a watch, followed logs) is checked again every Recheck while it
// is open and ended with PermissionDenied once its certificate is revoked.
// Nodes' streams are not: a node's certificate is replaced at every
// renewal while its connection keeps the old one, and a removed node's
// session ends with its removal.
func (a Authorizer) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		id, ok := identity.IdentityFrom(ctx)
		if a.Check == nil || !ok || id.Role != identity.RoleAdmin || a.Local != nil {
			return handler(srv, &authorizedStream{ServerStream: ss, ctx: ctx})
		}
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		every := a.Recheck
		if every <= 0 {
			every = DefaultRecheck
		}
		go func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					if err := a.Check(ctx, id); err != nil {
						cancel(revoked{err})
						return
					}
				}
			}
		}()
		err = handler(srv, &authorizedStream{ServerStream: ss, ctx: ctx})
		var r revoked
		if errors.As(context.Cause(ctx), &r) {
			return status.Errorf(codes.PermissionDenied, "%s: stream ended: %v", info.FullMethod, status.Convert(r.err).Message())
		}
		return err
	}
}

// ServerOptions installs both interceptors.
func (a Authorizer) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(a.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(a.StreamInterceptor()),
	}
}

type authorizedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *authorizedStream) Context() context.Context { return s.ctx }

// AuthorizeRaft checks the peer of an accepted raft connection (ALPN
// ALPNRaft, not gRPC): only current managers may speak raft. It fails
// closed: without a CheckRaft (no store to ask yet) every peer is refused.
func (a Authorizer) AuthorizeRaft(ctx context.Context, cs tls.ConnectionState) (identity.Identity, error) {
	id, err := identity.IdentityFromState(cs)
	if err != nil {
		return identity.Identity{}, err
	}
	if id.Role != identity.RoleManager {
		return identity.Identity{}, status.Errorf(codes.PermissionDenied, "%s certificates may not speak raft", id.Role)
	}
	if a.CheckRaft == nil {
		return identity.Identity{}, status.Error(codes.Unavailable, "this manager is not ready to check raft peers yet")
	}
	if err := a.CheckRaft(ctx, id, cs.VerifiedChains[0][0]); err != nil {
		return identity.Identity{}, err
	}
	return id, nil
}

// RaftChecker returns the Authorizer's CheckRaft for a manager's store: a
// raft peer's node must not have been removed, and must still be a
// manager (or be meant to become one) with the certificate the store
// records for it.
//
// A manager's store can be behind the cluster (it restarted from an old
// snapshot, it was cut off, it just joined): hashicorp/raft applies the
// log past the snapshot only once a leader tells it the commit index, and
// only the leader sends it entries. So the check refuses only on evidence
// that stays true as the store catches up, or it could refuse the very
// leader that would bring it up to date: a node recorded as removed (node
// ids are never reused), a node whose recorded certificate is this one or
// newer while the node is no longer a manager, or a certificate older than
// the recorded one. A node the store does not know yet, or a certificate
// newer than the recorded one, is let through: the store is behind, and
// the leader's entries will tell.
func RaftChecker(st *store.Store) func(ctx context.Context, id identity.Identity, cert *x509.Certificate) error {
	return func(_ context.Context, id identity.Identity, cert *x509.Certificate) error {
		var (
			n       *api.Node
			removed bool
		)
		st.View(func(tx store.ReadTx) {
			n = tx.Node(id.NodeID)
			for _, r := range tx.Cluster().GetRemovedNodes() {
				if r.GetNodeId() == id.NodeID {
					removed = true
				}
			}
		})
		return checkRaftPeer(n, removed, id, cert)
	}
}

func checkRaftPeer(n *api.Node, removed bool, id identity.Identity, cert *x509.Certificate) error {
	if removed {
		return status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster: its certificate %s may not speak raft", id.NodeID, id.Serial)
	}
	if n == nil {
		return nil
	}
	rec := n.GetCertificate()
	if rec.GetSerial() != id.Serial {
		if rec.GetSerial() != "" && !certNewer(cert, rec) {
			return status.Errorf(codes.PermissionDenied, "certificate %s of node %s was replaced by %s: it may not speak raft", id.Serial, id.NodeID, rec.GetSerial())
		}
		// Newer than the record: the store has not seen the renewal yet.
		return nil
	}
	if n.GetRole() != api.NodeRole_NODE_ROLE_MANAGER && n.GetSpec().GetDesiredRole() != api.NodeRole_NODE_ROLE_MANAGER {
		return status.Errorf(codes.PermissionDenied, "node %s is no longer a manager: its certificate %s may not speak raft", id.NodeID, id.Serial)
	}
	return nil
}

// certNewer reports whether cert was issued after the recorded one: by
// not_before when recorded, else by expiry (node certificates of one
// cluster share their validity).
func certNewer(cert *x509.Certificate, rec *api.NodeCertificate) bool {
	if nb := rec.GetNotBefore(); nb != nil {
		return cert.NotBefore.Unix() > nb.AsTime().Unix()
	}
	return cert.NotAfter.Unix() > rec.GetNotAfter().AsTime().Unix()
}

// Checker returns the Authorizer's Check for a manager's store: the node a
// certificate names must still exist, and the certificate must be the one
// the store records for it. An admin certificate must be one the cluster
// records (see checkAdminCert).
func Checker(st *store.Store) func(ctx context.Context, id identity.Identity) error {
	return func(_ context.Context, id identity.Identity) error {
		if id.Role == identity.RoleAdmin {
			var c *api.Cluster
			st.View(func(tx store.ReadTx) { c = tx.Cluster() })
			return checkAdminCert(c, id)
		}
		if !id.IsNode() {
			return status.Errorf(codes.PermissionDenied, "certificate %s has no node role", id.Serial)
		}
		var n *api.Node
		st.View(func(tx store.ReadTx) { n = tx.Node(id.NodeID) })
		return checkNodeCert(n, id)
	}
}

func checkNodeCert(n *api.Node, id identity.Identity) error {
	if n == nil {
		return status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster: join it again with a join token", id.NodeID)
	}
	if rec := n.GetCertificate().GetSerial(); rec != id.Serial {
		if rec == "" {
			return status.Errorf(codes.PermissionDenied, "node %s has no certificate on record; certificate %s is refused", id.NodeID, id.Serial)
		}
		return status.Errorf(codes.PermissionDenied, "certificate %s of node %s was replaced by %s: use the current certificate", id.Serial, id.NodeID, rec)
	}
	return nil
}

// checkAdminCert accepts an admin certificate only while the cluster
// records its serial: revoking one removes the record, and the next call
// made with it, on any connection, is refused.
func checkAdminCert(c *api.Cluster, id identity.Identity) error {
	for _, rec := range c.GetAdminCertificates() {
		if rec.GetSerial() == id.Serial {
			return nil
		}
	}
	return status.Errorf(codes.PermissionDenied, "admin certificate %s (%s) is not on record: it was revoked or never issued by this cluster; get a new one with `shoalctl cluster admin-cert issue` on a manager", id.Serial, id.NodeID)
}
