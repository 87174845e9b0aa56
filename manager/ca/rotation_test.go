package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// member is a node as the daemon runs it: a swappable keypair and trust,
// renewed the way worker.Renew and the daemon do it.
type member struct {
	id    string
	kp    *identity.Keypair
	trust *identity.Trust
}

func newMember(t *testing.T, i identitytest.Issued) *member {
	trust, err := i.Creds.Trust()
	if err != nil {
		t.Fatal(err)
	}
	return &member{id: i.ID.NodeID, kp: i.Keypair(t), trust: trust}
}

// conn dials the manager at addr as m does: fresh, since a connection
// keeps the certificate it was made with.
func (m *member) conn(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(
		identity.ClientConfigTrust(m.kp, m.trust, identity.ManagerServerName, identity.ALPNGRPC))))
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// renew renews m's certificate through the manager at addr and swaps in
// the certificate and the CAs the answer gives, as the daemon does.
func (m *member) renew(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	cc := m.conn(t, addr)
	defer cc.Close()
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := api.NewCAClient(cc).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{CsrPem: csrPEM})
	if err != nil {
		t.Fatalf("%s renews: %v", m.id, err)
	}
	creds := identity.Credentials{CACertPEM: resp.GetCaCertPem(), CertPEM: resp.GetCertPem(), KeyPEM: keyPEM}
	cert, err := creds.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.trust.Set(creds.CACertPEM); err != nil {
		t.Fatal(err)
	}
	m.kp.Set(cert)
}

// call makes an authorized call to the manager at addr: an empty CSR,
// refused as such only once the caller got through TLS and the
// authorizer.
func (m *member) call(t *testing.T, ctx context.Context, addr string) error {
	t.Helper()
	cc := m.conn(t, addr)
	defer cc.Close()
	_, err := api.NewCAClient(cc).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{})
	if status.Code(err) == codes.InvalidArgument && strings.Contains(err.Error(), "CSR") {
		return nil
	}
	return err
}

// needsRenewal is what the dispatcher tells m on its next heartbeat.
func needsRenewal(n *state.Node, id string) bool {
	var need bool
	n.Store().View(func(tx store.ReadTx) { need = NeedsRenewal(tx.Cluster(), tx.Nodes, tx.Node(id)) })
	return need
}

func issuedBy(t *testing.T, m *member, root *x509.Certificate) bool {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(root)
	_, err := m.kp.Leaf().Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

// TestRootRotation rotates the root CA with a manager and a worker
// connected over real TLS: every step keeps both able to reach each
// other, both end with certificates of the new root, the old root leaves
// everyone's trust, and a certificate of the old root is refused.
func TestRootRotation(t *testing.T) {
	stored, oldRoot := identitytest.NewCA(t, "c1")
	n := newRaft(t, stored)
	mIssued := identitytest.IssueNode(t, oldRoot, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	wIssued := identitytest.IssueNode(t, oldRoot, "w1", api.NodeRole_NODE_ROLE_WORKER)
	addNode(t, n, mIssued, "127.0.0.1:1")
	addNode(t, n, wIssued, "")
	mgr, wrk := newMember(t, mIssued), newMember(t, wIssued)
	ctx, cancel := context.WithTimeout(context.Background(), settle)
	defer cancel()

	// The manager's port: its keypair, and its trust following the store.
	go FollowTrust(ctx, n.Store(), mgr.trust, quietLogger())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(append(Authorizer{Check: Checker(n.Store())}.ServerOptions(),
		grpc.Creds(credentials.NewTLS(identity.ServerConfigTrust(mgr.kp, mgr.trust))))...)
	registerAll(srv, n)
	start(t, srv, lis)
	addr := lis.Addr().String()

	reachable := func(step string) {
		t.Helper()
		for _, m := range []*member{mgr, wrk} {
			if err := m.call(t, ctx, addr); err != nil {
				t.Fatalf("%s: %s cannot reach the manager: %v", step, m.id, err)
			}
		}
	}
	reachable("before")

	newPB, err := StartRotation(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	newRoot, err := identity.ParseRootCA(newPB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := StartRotation(ctx, n); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second rotation while one runs: %v, want FailedPrecondition", err)
	}
	waitFor(t, "the manager trusts both roots", func() bool { return len(parseAll(t, mgr.trust.PEM())) == 2 })
	if !needsRenewal(n, "m1") || !needsRenewal(n, "w1") {
		t.Fatal("the nodes are not asked to renew")
	}

	// The manager renews first: it gets both roots, but a certificate of
	// the old one while a worker may still trust only that.
	mgr.renew(t, ctx, addr)
	if !issuedBy(t, mgr, oldRoot.Cert) || len(parseAll(t, mgr.trust.PEM())) != 2 {
		t.Fatal("the manager was re-issued by the new root before the workers trust it")
	}
	if needsRenewal(n, "m1") {
		t.Fatal("the manager is asked again before the workers moved")
	}
	reachable("manager renewed")

	wrk.renew(t, ctx, addr)
	if !issuedBy(t, wrk, newRoot.Cert) {
		t.Fatal("the worker's certificate is not of the new root")
	}
	reachable("worker on the new root, manager on the old")

	if done, err := FinishRotation(ctx, n); err != nil || done {
		t.Fatalf("finished with the manager still on the old root: %v, %v", done, err)
	}
	if !needsRenewal(n, "m1") {
		t.Fatal("the manager is not asked to move once the workers have")
	}
	mgr.renew(t, ctx, addr)
	if !issuedBy(t, mgr, newRoot.Cert) {
		t.Fatal("the manager's certificate is not of the new root")
	}
	reachable("both on the new root")

	// The rotation controller's pass.
	if done, err := FinishRotation(ctx, n); err != nil || !done {
		t.Fatalf("finish: %v, %v", done, err)
	}
	c := getCluster(n)
	if c.GetCaRotation() != nil || c.GetRootCa().GetDigest() != newRoot.Digest {
		t.Fatalf("after the rotation the root is %s (rotation %v), want %s", c.GetRootCa().GetDigest(), c.GetCaRotation(), newRoot.Digest)
	}
	for _, tok := range []string{c.GetJoinTokens().GetWorker(), c.GetJoinTokens().GetManager()} {
		if p, err := identity.ParseToken(tok); err != nil || p.Digest != newRoot.Digest {
			t.Errorf("join token names %v (%v), want the new root", p.Digest, err)
		}
	}
	waitFor(t, "the manager trusts the new root alone", func() bool { return bytes.Equal(mgr.trust.PEM(), newRoot.CertPEM) })
	reachable("old root retired, before the last renewals")

	// One more renewal each, asked by the dispatcher, drops the old root.
	for _, m := range []*member{wrk, mgr} {
		if !needsRenewal(n, m.id) {
			t.Fatalf("%s is not asked to drop the old root", m.id)
		}
		m.renew(t, ctx, addr)
		if needsRenewal(n, m.id) {
			t.Fatalf("%s is still asked to renew", m.id)
		}
		if !bytes.Equal(m.trust.PEM(), newRoot.CertPEM) || !issuedBy(t, m, newRoot.Cert) {
			t.Fatalf("%s trusts %d roots after the rotation, want the new one alone", m.id, len(parseAll(t, m.trust.PEM())))
		}
	}
	reachable("after")

	// A certificate of the old root is refused: by the manager (even an
	// admin certificate on record), and by a node dialing a server that
	// shows one.
	oldAdmin := identitytest.IssueAdmin(t, oldRoot)
	recordAdmin(t, n, oldAdmin)
	stale := newMember(t, oldAdmin)
	stale.trust = mgr.trust
	if err := stale.call(t, ctx, addr); status.Code(err) != codes.Unavailable {
		t.Fatalf("old-root admin certificate: %v, want a refused handshake", err)
	}
	oldServer := identitytest.IssueNode(t, oldRoot, "m9", api.NodeRole_NODE_ROLE_MANAGER)
	oldPool, _ := oldServer.Creds.Pool()
	if _, _, cliErr := identitytest.Handshake(t, identity.ServerConfig(oldServer.Keypair(t), oldPool),
		identity.ClientConfigTrust(wrk.kp, wrk.trust, identity.ManagerServerName, identity.ALPNGRPC)); cliErr == nil {
		t.Fatal("the worker accepted a manager certificate of the retired root")
	}
}

func parseAll(t *testing.T, bundle []byte) []*x509.Certificate {
	t.Helper()
	certs, err := identity.ParseCertificatesPEM(bundle)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
