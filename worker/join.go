package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

// The join handshake and certificate renewal are the worker's: every
// node, manager or not, is a client of the managers, and these are its
// calls to their CA. They dial, so they cannot live in package identity
// (which only makes and checks the material); the CA's side is
// manager/ca's.

// callTimeout bounds each call to a manager's CA: it answers in
// milliseconds (signing is cheap), or the manager is lost; a call without
// a deadline would wait on a silent one until TCP gives up.
const callTimeout = 10 * time.Second

// JoinRequest is what a node presents to join a cluster.
type JoinRequest struct {
	// Manager is any manager's address; the cluster port is assumed when
	// it names none.
	Manager string
	// Token is the join token (parsed before anything else is done); it
	// decides the role and names the CA the manager must present.
	Token identity.Token
	// AdvertiseAddr is where the other nodes reach this one (host:port).
	AdvertiseAddr string
	Description   *api.NodeDescription
}

// Joined is what a node keeps from a successful join.
type Joined struct {
	NodeID      string
	Credentials identity.Credentials
	// Managers are the managers' advertise addresses, the one joined
	// through when the cluster named none.
	Managers []string
	// ManagerNodes names the node behind each manager address (addresses
	// alone when the managers did not say).
	ManagerNodes []*api.ManagerNode
}

// Join runs the join handshake: it trusts the manager only if the CA
// certificate it presents has the digest the token names, fetches that
// CA, and has it sign a new key for this node. Nothing is written: the
// caller keeps the result.
func Join(ctx context.Context, req JoinRequest) (Joined, error) {
	tok := req.Token
	addr := req.Manager
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, strconv.Itoa(identity.DefaultPort))
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.JoinConfig(tok.Digest))), identity.KeepaliveDialOption())
	if err != nil {
		return Joined{}, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	ca := api.NewCAClient(conn)
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	root, err := ca.GetRootCACertificate(cctx, &api.GetRootCACertificateRequest{})
	if err != nil {
		return Joined{}, fmt.Errorf("join %s: %w", addr, errMessage(err))
	}
	if _, err := identity.VerifyRootCA(root.GetCertPem(), tok.Digest); err != nil {
		return Joined{}, fmt.Errorf("join %s: %w", addr, err)
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		return Joined{}, err
	}
	ictx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	issued, err := ca.IssueNodeCertificate(ictx, &api.IssueNodeCertificateRequest{
		Token: tok.String(), CsrPem: csrPEM, Description: req.Description, AdvertiseAddr: req.AdvertiseAddr,
	})
	if err != nil {
		return Joined{}, fmt.Errorf("join %s: %w", addr, errMessage(err))
	}
	managers := issued.GetManagers()
	nodes := issued.GetManagerNodes()
	if len(managers) == 0 {
		managers = []string{addr}
		nodes = nil
	}
	if len(nodes) == 0 {
		nodes = ManagerNodes(managers)
	}
	// During a CA rotation the cluster trusts a second root; the manager
	// that says so was verified against the token's CA.
	trusted := root.GetCertPem()
	if b := issued.GetCaCertPem(); len(b) > 0 {
		trusted = b
	}
	return Joined{
		NodeID:       issued.GetNodeId(),
		Credentials:  identity.Credentials{CACertPEM: trusted, CertPEM: issued.GetCertPem(), KeyPEM: keyPEM},
		Managers:     managers,
		ManagerNodes: nodes,
	}, nil
}

// Renew has a manager sign a new key for this node, for the role the
// operator wants it to have now (the managers decide). The result trusts
// the CAs the manager says the cluster trusts now (two during a CA
// rotation, the new root alone after it), or caCertPEM if it says
// nothing. Nothing is written: the caller keeps the result and swaps it
// in.
func Renew(ctx context.Context, managers Managers, caCertPEM []byte) (identity.Credentials, error) {
	conn, addr, err := managers.Conn(ctx, "")
	if err != nil {
		return identity.Credentials{}, err
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		return identity.Credentials{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := api.NewCAClient(conn).RenewNodeCertificate(cctx, &api.RenewNodeCertificateRequest{CsrPem: csrPEM})
	if err != nil {
		return identity.Credentials{}, fmt.Errorf("via %s: %w", addr, err)
	}
	if b := resp.GetCaCertPem(); len(b) > 0 {
		caCertPEM = b
	}
	return identity.Credentials{CACertPEM: caCertPEM, CertPEM: resp.GetCertPem(), KeyPEM: keyPEM}, nil
}

// errMessage strips gRPC's framing from an error for a person.
func errMessage(err error) error {
	if st, ok := status.FromError(err); ok {
		return errors.New(st.Message())
	}
	return err
}
