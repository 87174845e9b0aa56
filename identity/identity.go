package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// Role is what a certificate lets its holder do. It extends api.NodeRole
// with the operator's admin role, which no node has.
type Role int

const (
	RoleUnknown Role = iota
	RoleWorker
	RoleManager
	// RoleAdmin is shoalctl: the control API and nothing else.
	RoleAdmin
)

// Organisational units in certificates, one per role.
const (
	ouWorker  = "shoal-worker"
	ouManager = "shoal-manager"
	ouAdmin   = "shoal-admin"
)

// RoleOf converts a node role.
func RoleOf(r api.NodeRole) Role {
	switch r {
	case api.NodeRole_NODE_ROLE_WORKER:
		return RoleWorker
	case api.NodeRole_NODE_ROLE_MANAGER:
		return RoleManager
	}
	return RoleUnknown
}

// NodeRole is the node role, or UNSPECIFIED for admin and unknown.
func (r Role) NodeRole() api.NodeRole {
	switch r {
	case RoleWorker:
		return api.NodeRole_NODE_ROLE_WORKER
	case RoleManager:
		return api.NodeRole_NODE_ROLE_MANAGER
	}
	return api.NodeRole_NODE_ROLE_UNSPECIFIED
}

func (r Role) String() string {
	switch r {
	case RoleWorker:
		return "worker"
	case RoleManager:
		return "manager"
	case RoleAdmin:
		return "admin"
	}
	return "unknown"
}

// OU is the organizational unit that names r in a certificate subject.
func (r Role) OU() string {
	switch r {
	case RoleWorker:
		return ouWorker
	case RoleManager:
		return ouManager
	case RoleAdmin:
		return ouAdmin
	}
	return ""
}

func roleFromOU(ou string) Role {
	switch ou {
	case ouWorker:
		return RoleWorker
	case ouManager:
		return RoleManager
	case ouAdmin:
		return RoleAdmin
	}
	return RoleUnknown
}

// Identity is who is calling, as their certificate says.
type Identity struct {
	// NodeID is the certificate's CN: a node id, or "admin".
	NodeID string
	Role   Role
	// Serial is the certificate's serial in hex ("" for the local socket).
	Serial    string
	ClusterID string
}

// IsNode reports whether the identity is a worker or a manager.
func (id Identity) IsNode() bool { return id.Role == RoleWorker || id.Role == RoleManager }

// IdentityOf reads the identity a certificate carries.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if len(cert.Subject.OrganizationalUnit) != 1 || len(cert.Subject.Organization) != 1 || cert.Subject.CommonName == "" {
		return Identity{}, fmt.Errorf("certificate %s names no shoal node: want one OU, one O and a CN", SerialString(cert))
	}
	role := roleFromOU(cert.Subject.OrganizationalUnit[0])
	if role == RoleUnknown {
		return Identity{}, fmt.Errorf("certificate %s has unknown role %q", SerialString(cert), cert.Subject.OrganizationalUnit[0])
	}
	return Identity{
		NodeID:    cert.Subject.CommonName,
		Role:      role,
		Serial:    SerialString(cert),
		ClusterID: cert.Subject.Organization[0],
	}, nil
}

// IdentityFromState reads the peer's identity from a finished TLS
// handshake (a server's view): only a chain verified against the cluster
// CA counts. The raft stream layer, which is not gRPC, uses this.
func IdentityFromState(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	id, err := IdentityOf(cs.VerifiedChains[0][0])
	if err != nil {
		return Identity{}, status.Error(codes.Unauthenticated, err.Error())
	}
	return id, nil
}

// IdentityFromContext reads the identity of a gRPC call's peer from its
// verified TLS chain. It fails with Unauthenticated when there is none.
func IdentityFromContext(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, status.Error(codes.Unauthenticated, "connection is not TLS")
	}
	return IdentityFromState(info.State)
}

// LocalIdentity is who calls over the node's unix socket: root on this
// machine (the socket is mode 0600), so an admin acting on this node.
func LocalIdentity(nodeID string) Identity {
	return Identity{NodeID: nodeID, Role: RoleAdmin}
}

type identityKey struct{}

// WithIdentity stores an authorized identity in a context.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the identity the interceptors authorized, if any.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// String formats an identity for logs.
func (id Identity) String() string {
	if id.Serial == "" {
		return fmt.Sprintf("%s %s", id.Role, id.NodeID)
	}
	return fmt.Sprintf("%s %s (certificate %s)", id.Role, id.NodeID, id.Serial)
}
