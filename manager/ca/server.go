package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// updateAttempts: a node or the cluster object may be written by someone
// else (heartbeats, the operator) between our read and our proposal; a
// few fresh reads ride that out.
const updateAttempts = 5

// Raft is what the CA needs of the raft member.
type Raft interface {
	Store() *store.Store
	Propose(ctx context.Context, actions ...*api.StoreAction) error
}

// ServerOptions tune the CA server.
type ServerOptions struct {
	// NodeValidity is the lifetime of issued node certificates;
	// 0 means DefaultNodeValidity.
	NodeValidity time.Duration
	Logger       *slog.Logger
}

// Server implements api.CAServer over the cluster object in the store.
// Run it on every manager; issuing needs the leader (the new node is
// written through raft), so followers answer Unavailable like any write.
type Server struct {
	api.UnimplementedCAServer
	raft   Raft
	opts   ServerOptions
	logger *slog.Logger

	mu      sync.Mutex
	signers map[string]*identity.RootCA // parsed CAs by digest: the root, and a rotation's new root
}

// NewServer returns a CA server.
func NewServer(r Raft, opts ServerOptions) *Server {
	if opts.NodeValidity == 0 {
		opts.NodeValidity = identity.DefaultNodeValidity
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Server{raft: r, opts: opts, logger: opts.Logger.With("component", "ca")}
}

func (s *Server) cluster() (*api.Cluster, error) {
	var c *api.Cluster
	s.raft.Store().View(func(tx store.ReadTx) { c = tx.Cluster() })
	if c == nil {
		return nil, status.Error(codes.FailedPrecondition, "the cluster is not initialised yet")
	}
	if len(c.GetRootCa().GetCertPem()) == 0 {
		return nil, status.Error(codes.FailedPrecondition, "the cluster has no CA")
	}
	return c, nil
}

// signer is the CA that signs a certificate of role now (issuerFor),
// parsed once per digest.
func (s *Server) signer(c *api.Cluster, role api.NodeRole) (*identity.RootCA, error) {
	var nodes []*api.Node
	s.raft.Store().View(func(tx store.ReadTx) { nodes = tx.Nodes() })
	stored := issuerFor(c, nodes, role)
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.signers[stored.GetDigest()]; r != nil {
		return r, nil
	}
	r, err := identity.ParseRootCA(stored)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "cluster CA: %v", err)
	}
	if len(s.signers) > 4 { // old roots: no need to keep them
		s.signers = nil
	}
	if s.signers == nil {
		s.signers = map[string]*identity.RootCA{}
	}
	s.signers[stored.GetDigest()] = r
	return r, nil
}

// certRecord is what a node object records of a certificate signer
// issued in cluster c.
func certRecord(cert *x509.Certificate, role api.NodeRole, signer *identity.RootCA, c *api.Cluster) *api.NodeCertificate {
	rec := identity.CertificateRecord(cert, role)
	rec.Issuer = signer.Digest
	rec.Trust = TrustDigest(c)
	return rec
}

// GetRootCACertificate returns the cluster's CA certificate.
func (s *Server) GetRootCACertificate(ctx context.Context, _ *api.GetRootCACertificateRequest) (*api.GetRootCACertificateResponse, error) {
	c, err := s.cluster()
	if err != nil {
		return nil, err
	}
	return &api.GetRootCACertificateResponse{CertPem: c.GetRootCa().GetCertPem()}, nil
}

// IssueNodeCertificate admits a new node: the token decides its role, the
// CA signs its CSR under a new node id, and the node object is created in
// the same step. Nothing is written unless all of it succeeds.
func (s *Server) IssueNodeCertificate(ctx context.Context, req *api.IssueNodeCertificateRequest) (*api.IssueNodeCertificateResponse, error) {
	tok, err := identity.ParseToken(req.GetToken())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	c, err := s.cluster()
	if err != nil {
		return nil, err
	}
	if tok.Digest != c.GetRootCa().GetDigest() {
		return nil, status.Errorf(codes.PermissionDenied, "join token is for another cluster, or from before a CA rotation: it names CA %s, this cluster's CA is %s; get the current token with `shoalctl cluster join-token`", tok.Digest, c.GetRootCa().GetDigest())
	}
	// Compare with both so the time taken does not tell which matched.
	isWorker := identity.TokenMatches(req.GetToken(), c.GetJoinTokens().GetWorker())
	isManager := identity.TokenMatches(req.GetToken(), c.GetJoinTokens().GetManager())
	var role api.NodeRole
	switch {
	case isManager:
		role = api.NodeRole_NODE_ROLE_MANAGER
	case isWorker:
		role = api.NodeRole_NODE_ROLE_WORKER
	default:
		return nil, status.Error(codes.PermissionDenied, "join token was not accepted: it may have been rotated; get the current one on a manager with `shoalctl cluster join-token worker` (or manager)")
	}
	addr := req.GetAdvertiseAddr()
	if addr == "" && role == api.NodeRole_NODE_ROLE_MANAGER {
		return nil, status.Error(codes.InvalidArgument, "advertise_addr: a manager must say where the others reach it (host:port)")
	}
	if addr != "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "advertise_addr %q: want host:port", addr)
		}
		// Other nodes take the node's data address from this one: it
		// must name one host they can reach.
		if ip, err := netip.ParseAddr(host); err == nil {
			if err := api.ValidDataAddr(ip); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "advertise_addr %q: %v", addr, err)
			}
		}
	}
	if err := api.ValidateNodeDescription(req.GetDescription()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.hostnameFree(req.GetDescription().GetHostname()); err != nil {
		return nil, err
	}
	signer, err := s.signer(c, role)
	if err != nil {
		return nil, err
	}
	nodeID := api.NewID()
	certPEM, cert, err := signer.Issue(req.GetCsrPem(), nodeID, role, s.opts.NodeValidity)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	node := &api.Node{
		Id:   nodeID,
		Meta: &api.Meta{CreatedAt: timestamppb.Now()},
		Spec: &api.NodeSpec{
			DesiredRole:  role,
			Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
		},
		Description:   req.GetDescription(),
		Status:        &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN, Addr: addr},
		Role:          role,
		Certificate:   certRecord(cert, role, signer, c),
		AdvertiseAddr: addr,
	}
	if role == api.NodeRole_NODE_ROLE_MANAGER {
		node.ManagerStatus = &api.ManagerStatus{RaftAddr: addr}
	}
	if err := s.raft.Propose(ctx, store.Create(node)); err != nil {
		return nil, state.ToStatus(fmt.Errorf("record node %s: %w", nodeID, err))
	}
	var managers []*api.ManagerNode
	s.raft.Store().View(func(tx store.ReadTx) { managers = managerNodes(tx, nodeID) })
	s.logger.Info("node joined", "node", nodeID, "role", identity.RoleOf(role), "hostname", req.GetDescription().GetHostname(), "addr", addr, "serial", identity.SerialString(cert))
	resp := &api.IssueNodeCertificateResponse{NodeId: nodeID, CertPem: certPEM, Role: role, ManagerNodes: managers, CaCertPem: TrustPEM(c)}
	for _, m := range managers {
		resp.Managers = append(resp.Managers, m.GetAddr())
	}
	return resp, nil
}

// RenewNodeCertificate signs a new CSR for the calling node, with the role
// the operator wants it to have now, and records the new certificate: the
// old one is refused from then on, so the node must reconnect with the new
// one.
func (s *Server) RenewNodeCertificate(ctx context.Context, req *api.RenewNodeCertificateRequest) (*api.RenewNodeCertificateResponse, error) {
	id, ok := identity.IdentityFrom(ctx)
	if !ok {
		var err error
		if id, err = identity.IdentityFromContext(ctx); err != nil {
			return nil, err
		}
	}
	if !id.IsNode() {
		return nil, status.Errorf(codes.PermissionDenied, "%s certificates are not renewed by the cluster: make a new one on a manager", id.Role)
	}
	for attempt := 1; ; attempt++ {
		c, err := s.cluster()
		if err != nil {
			return nil, err
		}
		var n *api.Node
		s.raft.Store().View(func(tx store.ReadTx) { n = tx.Node(id.NodeID) })
		if err := checkNodeCert(n, id); err != nil {
			return nil, err
		}
		role := n.GetSpec().GetDesiredRole()
		if role == api.NodeRole_NODE_ROLE_UNSPECIFIED {
			role = n.GetRole()
		}
		signer, err := s.signer(c, role)
		if err != nil {
			return nil, err
		}
		certPEM, cert, err := signer.Issue(req.GetCsrPem(), id.NodeID, role, s.opts.NodeValidity)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		upd := proto.Clone(n).(*api.Node)
		upd.Certificate = certRecord(cert, role, signer, c)
		err = s.raft.Propose(ctx, store.Update(upd))
		if errors.Is(err, store.ErrSequenceConflict) && attempt < updateAttempts {
			continue
		}
		if err != nil {
			return nil, state.ToStatus(fmt.Errorf("record renewed certificate of node %s: %w", id.NodeID, err))
		}
		s.logger.Info("node certificate renewed", "node", id.NodeID, "role", identity.RoleOf(role), "serial", identity.SerialString(cert), "old_serial", id.Serial, "issuer", signer.Digest)
		return &api.RenewNodeCertificateResponse{CertPem: certPEM, Role: role, CaCertPem: TrustPEM(c)}, nil
	}
}

// RotateToken replaces the join token for role with a new one and returns
// it. Nodes that joined with the old token are not affected; joins with it
// are refused from then on.
func RotateToken(ctx context.Context, r Raft, role api.NodeRole) (string, error) {
	if identity.RoleOf(role) == identity.RoleUnknown {
		return "", status.Errorf(codes.InvalidArgument, "role: want worker or manager, not %v", role)
	}
	for attempt := 1; ; attempt++ {
		var c *api.Cluster
		r.Store().View(func(tx store.ReadTx) { c = tx.Cluster() })
		if c == nil {
			return "", status.Error(codes.FailedPrecondition, "the cluster is not initialised yet")
		}
		tok, err := identity.GenerateToken(c.GetRootCa().GetDigest())
		if err != nil {
			return "", status.Error(codes.Internal, err.Error())
		}
		upd := proto.Clone(c).(*api.Cluster)
		if upd.JoinTokens == nil {
			upd.JoinTokens = &api.JoinTokens{}
		}
		if role == api.NodeRole_NODE_ROLE_MANAGER {
			upd.JoinTokens.Manager = tok
		} else {
			upd.JoinTokens.Worker = tok
		}
		err = r.Propose(ctx, store.Update(upd))
		if errors.Is(err, store.ErrSequenceConflict) && attempt < updateAttempts {
			continue
		}
		if err != nil {
			return "", state.ToStatus(fmt.Errorf("rotate %s join token: %w", identity.RoleOf(role), err))
		}
		return tok, nil
	}
}

// ManagerAddrs are the advertise addresses of the managers, sorted: what a
// node dials to reach the cluster.
func ManagerAddrs(tx store.ReadTx) []string { return managerAddrs(tx, "") }

// ManagerNodes are the managers, by address as ManagerAddrs: what a worker
// checks a manager's certificate against.
func ManagerNodes(tx store.ReadTx) []*api.ManagerNode { return managerNodes(tx, "") }

func managerAddrs(tx store.ReadTx, except string) []string {
	var out []string
	for _, m := range managerNodes(tx, except) {
		out = append(out, m.GetAddr())
	}
	return out
}

func managerNodes(tx store.ReadTx, except string) []*api.ManagerNode {
	var out []*api.ManagerNode
	for _, n := range tx.Nodes() {
		if n.GetRole() != api.NodeRole_NODE_ROLE_MANAGER || n.GetId() == except {
			continue
		}
		addr := n.GetManagerStatus().GetRaftAddr()
		if addr == "" {
			addr = n.GetStatus().GetAddr()
		}
		if addr != "" {
			out = append(out, &api.ManagerNode{NodeId: n.GetId(), Addr: addr})
		}
	}
	slices.SortFunc(out, func(a, b *api.ManagerNode) int { return strings.Compare(a.GetAddr(), b.GetAddr()) })
	return out
}

// hostnameFree refuses a hostname another node holds: constraints and
// `node` commands name nodes by hostname, so a second node of the same
// name would take the first one's pinned tasks. The store refuses it too
// (atomically); this says what to do.
func (s *Server) hostnameFree(hostname string) error {
	var other *api.Node
	s.raft.Store().View(func(tx store.ReadTx) { other = store.NodeByHostname(tx, hostname, "") })
	if other == nil {
		return nil
	}
	return status.Errorf(codes.AlreadyExists, "hostname %q is taken by node %s (%s): give this node another hostname (shoald --hostname), or, if that node is gone, remove it first with `shoalctl node rm %s`",
		hostname, other.GetId(), strings.ToLower(strings.TrimPrefix(other.GetStatus().GetState().String(), "NODE_STATE_")), other.GetId())
}
