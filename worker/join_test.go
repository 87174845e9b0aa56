package worker_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/worker"
)

// serveCA runs a manager's CA service for a cluster with the CA stored,
// on the cluster port's TLS, and returns its address and join tokens.
func serveCA(t *testing.T, stored *api.RootCA, root *identity.RootCA) (string, *api.JoinTokens) {
	t.Helper()
	addr, tokens, _ := serveCARaft(t, stored, root)
	return addr, tokens
}

// serveCARaft is serveCA that also returns the manager's raft member. The
// manager trusts what its store says, as shoald's managers do.
func serveCARaft(t *testing.T, stored *api.RootCA, root *identity.RootCA) (string, *api.JoinTokens, *state.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, tr := raft.NewInmemTransport(raft.ServerAddress("m1"))
	r, err := state.Open(state.Config{Dir: t.TempDir(), ID: "m1", Transport: tr, Logger: logger}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if err := r.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	tokens, err := identity.NewJoinTokens(stored.GetDigest())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Propose(ctx, store.Create(&api.Cluster{Id: root.ClusterID(), Spec: &api.ClusterSpec{Name: "shoal"}, RootCa: stored, JoinTokens: tokens})); err != nil {
		t.Fatal(err)
	}
	mgr := identitytest.IssueNode(t, root, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	trust, err := mgr.Creds.Trust()
	if err != nil {
		t.Fatal(err)
	}
	followCtx, stopFollow := context.WithCancel(context.Background())
	t.Cleanup(stopFollow)
	go ca.FollowTrust(followCtx, r.Store(), trust, logger)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(identity.ServerConfigTrust(mgr.Keypair(t), trust))))
	api.RegisterCAServer(srv, ca.NewServer(r, ca.ServerOptions{Logger: logger}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), tokens, r
}

// TestJoinDuringRotation: a node joining while the root CA rotates, with
// a token naming the old root, trusts both roots and gets a certificate
// of the new one; its renewal keeps both until the rotation ends.
func TestJoinDuringRotation(t *testing.T) {
	stored, root := identitytest.NewCA(t, "c1")
	addr, tokens, r := serveCARaft(t, stored, root)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	newRoot, err := ca.StartRotation(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := identity.ParseToken(tokens.GetWorker())
	if err != nil {
		t.Fatal(err)
	}
	got, err := worker.Join(ctx, worker.JoinRequest{Manager: addr, Token: tok, Description: &api.NodeDescription{Hostname: "joiner"}})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := identity.ParseCertificatesPEM(got.Credentials.CACertPEM)
	if err != nil || len(roots) != 2 || identity.Digest(roots[0].Raw) != stored.GetDigest() || identity.Digest(roots[1].Raw) != newRoot.GetDigest() {
		t.Fatalf("joined trusting %d roots (%v), want the old and the new", len(roots), err)
	}
	leaf, err := got.Credentials.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(roots[1]); err != nil {
		t.Fatalf("a worker joining during a rotation got a certificate of the old root: %v", err)
	}
	renewed, err := worker.Renew(ctx, dialAs(t, got.Credentials, addr), []byte("unused: the manager names the CAs"))
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if string(renewed.CACertPEM) != string(got.Credentials.CACertPEM) {
		t.Error("the renewal did not carry the CAs the manager named")
	}
}

// TestJoin: a node joins only a manager whose CA the token names, gets a
// certificate of that CA for its role, learns where the managers are, and
// renews its certificate through them.
func TestJoin(t *testing.T) {
	stored, root := identitytest.NewCA(t, "c1")
	addr, tokens := serveCA(t, stored, root)
	otherStored, _ := identitytest.NewCA(t, "c2")
	otherCA, err := identity.GenerateToken(otherStored.GetDigest())
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := identity.GenerateToken(stored.GetDigest())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token, wantErr string
		wantRole             identity.Role
	}{
		{name: "worker token", token: tokens.GetWorker(), wantRole: identity.RoleWorker},
		{name: "manager token", token: tokens.GetManager(), wantRole: identity.RoleManager},
		{name: "token of another cluster", token: otherCA, wantErr: "not the one the join token names"},
		{name: "token not current", token: rotated, wantErr: "not accepted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := identity.ParseToken(tc.token)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			got, err := worker.Join(ctx, worker.JoinRequest{Manager: addr, Token: tok, AdvertiseAddr: "192.0.2.20:4242", Description: &api.NodeDescription{Hostname: "joiner-" + strings.ReplaceAll(tc.name, " ", "-")}})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Join = %v, want an error saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			id, err := got.Credentials.Identity()
			if err != nil {
				t.Fatal(err)
			}
			if id.NodeID != got.NodeID || id.Role != tc.wantRole {
				t.Errorf("certificate names %v, want node %s as %v", id, got.NodeID, tc.wantRole)
			}
			if _, err := identity.VerifyRootCA(got.Credentials.CACertPEM, stored.GetDigest()); err != nil {
				t.Errorf("joined with another CA: %v", err)
			}
			// No manager recorded an address: the one joined through.
			if len(got.Managers) != 1 || got.Managers[0] != addr {
				t.Errorf("managers = %v, want [%s]", got.Managers, addr)
			}

			// The node renews through the managers it now trusts.
			renewed, err := worker.Renew(ctx, dialAs(t, got.Credentials, addr), got.Credentials.CACertPEM)
			if err != nil {
				t.Fatalf("Renew: %v", err)
			}
			rid, err := renewed.Identity()
			if err != nil {
				t.Fatal(err)
			}
			if rid.NodeID != id.NodeID || rid.Role != id.Role || rid.Serial == id.Serial {
				t.Errorf("renewed certificate names %v, want node %s as %v with a new serial (was %s)", rid, id.NodeID, id.Role, id.Serial)
			}
		})
	}
}

// oneManager is the Managers of a node that knows one manager.
type oneManager struct {
	conn *grpc.ClientConn
	addr string
}

func (m oneManager) Conn(context.Context, string) (grpc.ClientConnInterface, string, error) {
	return m.conn, m.addr, nil
}

func (oneManager) Update([]*api.ManagerNode) {}
func (oneManager) Vouch(string, string)      {}

func (oneManager) Silent(string) {}

// dialAs reaches the manager at addr with a node's credentials.
func dialAs(t *testing.T, creds identity.Credentials, addr string) oneManager {
	t.Helper()
	kp, err := creds.Keypair()
	if err != nil {
		t.Fatal(err)
	}
	roots, err := creds.Pool()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientConfig(kp, roots, identity.ManagerServerName, identity.ALPNGRPC))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return oneManager{conn: conn, addr: addr}
}
