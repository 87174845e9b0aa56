package controlapi

import (
	"bytes"
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// tlsCluster is a manager's control API on a real TLS port behind the
// real authorizer, over a store holding a cluster with a CA, tokens, a
// manager and an admin.
type tlsCluster struct {
	r       *state.Node
	root    *identity.RootCA
	stored  *api.RootCA
	manager identitytest.Issued
	admin   identitytest.Issued
	addr    string
}

func newTLSCluster(t *testing.T) *tlsCluster {
	t.Helper()
	r := newRaft(t)
	stored, root := identitytest.NewCA(t, "c1")
	tokens, err := identity.NewJoinTokens(stored.GetDigest())
	if err != nil {
		t.Fatal(err)
	}
	c := &tlsCluster{r: r, root: root, stored: stored,
		manager: identitytest.IssueNode(t, root, "m1", api.NodeRole_NODE_ROLE_MANAGER),
		admin:   identitytest.IssueAdmin(t, root)}
	cluster := &api.Cluster{Id: "c1", Spec: &api.ClusterSpec{Name: "shoal"}, RootCa: stored, JoinTokens: tokens,
		AdminCertificates: []*api.AdminCertificate{identity.AdminRecord(c.admin.Cert)}}
	node := &api.Node{Id: "m1", Role: api.NodeRole_NODE_ROLE_MANAGER,
		Spec:        &api.NodeSpec{DesiredRole: api.NodeRole_NODE_ROLE_MANAGER},
		Certificate: identity.CertificateRecord(c.manager.Cert, api.NodeRole_NODE_ROLE_MANAGER)}
	propose(t, r, store.Create(cluster), store.Create(node))

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	auth := ca.Authorizer{Check: ca.Checker(r.Store())}
	srv := grpc.NewServer(append(auth.ServerOptions(),
		grpc.Creds(credentials.NewTLS(identity.ServerConfig(c.manager.Keypair(t), root.Pool()))))...)
	api.RegisterControlServer(srv, newServer(t, r))
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	c.addr = lis.Addr().String()
	return c
}

// dial is a control client presenting creds.
func (c *tlsCluster) dial(t *testing.T, creds identitytest.Issued) api.ControlClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+c.addr, grpc.WithTransportCredentials(credentials.NewTLS(
		identity.ClientConfig(creds.Keypair(t), c.root.Pool(), identity.ManagerServerName, identity.ALPNGRPC))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return api.NewControlClient(cc)
}

// TestGetClusterRedactsSecrets: no control API answer carries the CA's
// private key, and only an admin sees the join tokens.
func TestGetClusterRedactsSecrets(t *testing.T) {
	c := newTLSCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	// A rotation in progress holds a second CA key.
	newRoot, err := ca.StartRotation(ctx, c.r)
	if err != nil {
		t.Fatal(err)
	}
	var stored *api.Cluster
	c.r.Store().View(func(tx store.ReadTx) { stored = proto.Clone(tx.Cluster()).(*api.Cluster) })

	for _, caller := range []struct {
		name       string
		creds      identitytest.Issued
		wantTokens bool
	}{{"admin", c.admin, true}, {"manager", c.manager, false}} {
		t.Run(caller.name, func(t *testing.T) {
			cl := c.dial(t, caller.creds)
			resp, err := cl.GetCluster(ctx, &api.GetClusterRequest{})
			if err != nil {
				t.Fatal(err)
			}
			raw, err := proto.Marshal(resp)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetCluster().GetRootCa().GetKeyPem()) != 0 || bytes.Contains(raw, stored.GetRootCa().GetKeyPem()) {
				t.Error("GetCluster answered with the root CA's private key")
			}
			if len(resp.GetCluster().GetCaRotation().GetNewRoot().GetKeyPem()) != 0 || bytes.Contains(raw, newRoot.GetKeyPem()) {
				t.Error("GetCluster answered with the new root's private key")
			}
			if !bytes.Equal(resp.GetCluster().GetRootCa().GetCertPem(), stored.GetRootCa().GetCertPem()) {
				t.Error("GetCluster lost the CA certificate, which is public")
			}
			hasTokens := bytes.Contains(raw, []byte(stored.GetJoinTokens().GetWorker())) || bytes.Contains(raw, []byte(stored.GetJoinTokens().GetManager()))
			if hasTokens != caller.wantTokens {
				t.Errorf("join tokens in the answer: %v, want %v", hasTokens, caller.wantTokens)
			}
			tok, err := cl.GetJoinToken(ctx, &api.GetJoinTokenRequest{Role: api.NodeRole_NODE_ROLE_WORKER})
			switch {
			case caller.wantTokens && (err != nil || tok.GetToken() != stored.GetJoinTokens().GetWorker()):
				t.Errorf("admin GetJoinToken: %q, %v", tok.GetToken(), err)
			case !caller.wantTokens && status.Code(err) != codes.PermissionDenied:
				t.Errorf("%s GetJoinToken: %v, want PermissionDenied", caller.name, err)
			}
		})
	}
	// The store itself keeps the key: redaction is of the answer only.
	var after *api.Cluster
	c.r.Store().View(func(tx store.ReadTx) { after = tx.Cluster() })
	if len(after.GetRootCa().GetKeyPem()) == 0 {
		t.Fatal("redaction removed the key from the store")
	}
}

// issueAdmin has cl issue an admin certificate named name, as `shoalctl
// cluster admin-cert issue` does: the key is made here.
func issueAdmin(t *testing.T, ctx context.Context, cl api.ControlClient, name string) (identitytest.Issued, error) {
	t.Helper()
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cl.IssueAdminCertificate(ctx, &api.IssueAdminCertificateRequest{Name: name, CsrPem: csrPEM})
	if err != nil {
		return identitytest.Issued{}, err
	}
	creds := identity.Credentials{CACertPEM: resp.GetCaCertPem(), CertPEM: resp.GetCertPem(), KeyPEM: keyPEM}
	leaf, err := creds.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	id, err := creds.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCertificate().GetSerial() != id.Serial || resp.GetCertificate().GetName() != name {
		t.Fatalf("issued record %v does not describe certificate %s %s", resp.GetCertificate(), id.Serial, id.NodeID)
	}
	return identitytest.Issued{Creds: creds, Cert: leaf, ID: id}, nil
}

// TestAdminCertificatesRevocable: the managers accept an admin
// certificate only while the cluster records it; one can be issued,
// listed and revoked, and a revoked one is refused on its next call, on
// the connection it already has.
func TestAdminCertificatesRevocable(t *testing.T) {
	c := newTLSCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	admin := c.dial(t, c.admin)

	// Signed by the cluster's CA, but never recorded: refused.
	unrecorded := c.dial(t, identitytest.IssueAdmin(t, c.root))
	if _, err := unrecorded.ListNodes(ctx, &api.ListNodesRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unrecorded admin certificate: %v, want PermissionDenied", err)
	}

	// A manager's certificate cannot mint operators.
	if _, err := issueAdmin(t, ctx, c.dial(t, c.manager), "sneaky"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("manager issuing an admin certificate: %v, want PermissionDenied", err)
	}
	if _, err := issueAdmin(t, ctx, admin, "bad name!"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad name: %v, want InvalidArgument", err)
	}

	alice, err := issueAdmin(t, ctx, admin, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if life := alice.Cert.NotAfter.Sub(alice.Cert.NotBefore); life > identity.DefaultAdminValidity+time.Hour {
		t.Errorf("admin certificate lasts %v, want the default %v", life, identity.DefaultAdminValidity)
	}
	aliceCl := c.dial(t, alice)
	if _, err := aliceCl.ListNodes(ctx, &api.ListNodesRequest{}); err != nil {
		t.Fatalf("issued admin certificate refused: %v", err)
	}
	list, err := aliceCl.ListAdminCertificates(ctx, &api.ListAdminCertificatesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, rec := range list.GetCertificates() {
		names = append(names, rec.GetName()+"/"+rec.GetSerial())
	}
	if want := []string{"admin/" + c.admin.ID.Serial, "alice/" + alice.ID.Serial}; !slices.Equal(names, want) {
		t.Fatalf("admin-cert ls: %v, want %v", names, want)
	}

	revoked, err := admin.RevokeAdminCertificate(ctx, &api.RevokeAdminCertificateRequest{Certificate: "alice"})
	if err != nil || len(revoked.GetRevoked()) != 1 || revoked.GetRevoked()[0].GetSerial() != alice.ID.Serial {
		t.Fatalf("revoke alice: %v, %v", revoked, err)
	}
	// The same connection, the next call: refused.
	_, err = aliceCl.ListNodes(ctx, &api.ListNodesRequest{})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "revoked") {
		t.Fatalf("revoked admin certificate: %v, want PermissionDenied saying it was revoked", err)
	}
	if _, err := admin.ListNodes(ctx, &api.ListNodesRequest{}); err != nil {
		t.Fatalf("the other admin certificate stopped working: %v", err)
	}
	if _, err := admin.RevokeAdminCertificate(ctx, &api.RevokeAdminCertificateRequest{Certificate: "alice"}); status.Code(err) != codes.NotFound {
		t.Fatalf("revoking again: %v, want NotFound", err)
	}
}
