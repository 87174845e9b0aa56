package controlapi

import (
	"bytes"
	"context"
	"net"
	"testing"

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
	cluster := &api.Cluster{Id: "c1", Spec: &api.ClusterSpec{Name: "shoal"}, RootCa: stored, JoinTokens: tokens}
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
