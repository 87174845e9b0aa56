package ca

import (
	"context"
	"crypto/x509"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// fakeControl answers GetCluster with the caller's identity, so tests see
// what the interceptors handed the handler; everything else is
// Unimplemented, which proves the call got past authorization.
type fakeControl struct{ api.UnimplementedControlServer }

func (fakeControl) GetCluster(ctx context.Context, _ *api.GetClusterRequest) (*api.GetClusterResponse, error) {
	id, ok := identity.IdentityFrom(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "handler got no identity")
	}
	return &api.GetClusterResponse{Cluster: &api.Cluster{Id: id.Role.String() + "/" + id.NodeID}}, nil
}

type fakeDispatcher struct {
	api.UnimplementedDispatcherServer
}

type fakeRaftMembership struct {
	api.UnimplementedRaftMembershipServer
}

func registerAll(srv *grpc.Server, n *state.Node) {
	api.RegisterCAServer(srv, NewServer(n, ServerOptions{Logger: quietLogger()}))
	api.RegisterControlServer(srv, fakeControl{})
	api.RegisterDispatcherServer(srv, fakeDispatcher{})
	api.RegisterRaftMembershipServer(srv, fakeRaftMembership{})
	// A service outside the table: nobody may call it.
	healthpb.RegisterHealthServer(srv, health.NewServer())
}

func start(t *testing.T, srv *grpc.Server, lis net.Listener) {
	t.Helper()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
}

// serveTLS runs the cluster port's gRPC server on loopback.
func serveTLS(t *testing.T, n *state.Node, server identitytest.Issued, pool identity.Credentials) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := pool.Pool()
	if err != nil {
		t.Fatal(err)
	}
	auth := Authorizer{Check: Checker(n.Store())}
	opts := append(auth.ServerOptions(), grpc.Creds(credentials.NewTLS(identity.ServerConfig(server.Keypair(t), p))))
	srv := grpc.NewServer(opts...)
	registerAll(srv, n)
	start(t, srv, lis)
	return lis.Addr().String()
}

func dialTLS(t *testing.T, addr string, client *identitytest.Issued, ca identity.Credentials) *grpc.ClientConn {
	t.Helper()
	p, err := ca.Pool()
	if err != nil {
		t.Fatal(err)
	}
	var kp *identity.Keypair
	if client != nil {
		kp = client.Keypair(t)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientConfig(kp, p, identity.ManagerServerName, identity.ALPNGRPC))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

type call func(ctx context.Context, cc *grpc.ClientConn) error

var calls = map[string]call{
	"CA/GetRootCACertificate": func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := api.NewCAClient(cc).GetRootCACertificate(ctx, &api.GetRootCACertificateRequest{})
		return err
	},
	// An empty CSR: a caller that gets past authorization is told the
	// CSR is bad, and nothing is renewed.
	"CA/RenewNodeCertificate": func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := api.NewCAClient(cc).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{})
		return err
	},
	"Control/GetCluster": func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := api.NewControlClient(cc).GetCluster(ctx, &api.GetClusterRequest{})
		return err
	},
	"Control/CreateService": func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := api.NewControlClient(cc).CreateService(ctx, &api.CreateServiceRequest{})
		return err
	},
	"Control/WatchTasks": func(ctx context.Context, cc *grpc.ClientConn) error {
		s, err := api.NewControlClient(cc).WatchTasks(ctx, &api.WatchTasksRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
	"Dispatcher/Heartbeat": func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := api.NewDispatcherClient(cc).Heartbeat(ctx, &api.HeartbeatRequest{})
		return err
	},
	"Dispatcher/Session": func(ctx context.Context, cc *grpc.ClientConn) error {
		s, err := api.NewDispatcherClient(cc).Session(ctx, &api.SessionRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
	"RaftMembership/Join": func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := api.NewRaftMembershipClient(cc).Join(ctx, &api.JoinRequest{})
		return err
	},
	"Health/Check": func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	},
}

// want is the expected outcome of a call: a code, and optionally words
// in the message.
type want struct {
	code codes.Code
	msg  string
}

const passed = codes.Unimplemented // a fake handler was reached

// TestAuthorizationOverTLS runs the cluster port's real gRPC server with
// the real TLS configs and interceptors, and calls every kind of method as
// every kind of caller.
func TestAuthorizationOverTLS(t *testing.T) {
	stored, r := identitytest.NewCA(t, "c1")
	_, other := identitytest.NewCA(t, "c2")
	n := newRaft(t, stored)
	manager := identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	addNode(t, n, manager, "127.0.0.1:4242")
	worker := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	addNode(t, n, worker, "127.0.0.1:4243")
	admin := identitytest.IssueAdmin(t, r)
	recordAdmin(t, n, admin)
	removed := identitytest.IssueNode(t, r, "gone", api.NodeRole_NODE_ROLE_WORKER) // never recorded
	replaced := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)  // w1 holds another serial
	now := time.Now()
	expired := identitytest.IssueWindow(t, stored, "m1", identity.RoleManager, now.Add(-48*time.Hour), now.Add(-time.Hour))
	stranger := identitytest.IssueNode(t, other, "m1", api.NodeRole_NODE_ROLE_MANAGER)

	addr := serveTLS(t, n, manager, manager.Creds)

	deny := func(msg string) want { return want{codes.PermissionDenied, msg} }
	unauth := want{codes.Unauthenticated, "needs a client certificate"}
	refused := want{code: codes.Unavailable} // TLS handshake fails
	denyAll := map[string]want{}
	for name := range calls {
		denyAll[name] = refused
	}

	tests := []struct {
		name   string
		client *identitytest.Issued
		want   map[string]want
	}{
		{"anonymous", nil, map[string]want{
			"CA/GetRootCACertificate": {code: codes.OK},
			"CA/RenewNodeCertificate": unauth,
			"Control/GetCluster":      unauth,
			"Control/CreateService":   unauth,
			"Control/WatchTasks":      unauth,
			"Dispatcher/Heartbeat":    unauth,
			"Dispatcher/Session":      unauth,
			"RaftMembership/Join":     unauth,
			"Health/Check":            deny("no caller may call /grpc.health.v1.Health/Check"),
		}},
		{"worker", &worker, map[string]want{
			"CA/GetRootCACertificate": {code: codes.OK},
			"CA/RenewNodeCertificate": {codes.InvalidArgument, "CSR"},
			"Control/GetCluster":      deny("worker certificates may not call /shoal.v1.Control/GetCluster"),
			"Control/CreateService":   deny("worker certificates may not call /shoal.v1.Control/CreateService"),
			"Control/WatchTasks":      deny("worker certificates may not call /shoal.v1.Control/WatchTasks"),
			"Dispatcher/Heartbeat":    {code: passed},
			"Dispatcher/Session":      {code: passed},
			"RaftMembership/Join":     deny("worker certificates may not call /shoal.v1.RaftMembership/Join"),
			"Health/Check":            deny("no caller may call"),
		}},
		{"manager", &manager, map[string]want{
			"CA/GetRootCACertificate": {code: codes.OK},
			"CA/RenewNodeCertificate": {codes.InvalidArgument, "CSR"},
			"Control/GetCluster":      {code: codes.OK},
			"Control/CreateService":   {code: passed},
			"Control/WatchTasks":      {code: passed},
			"Dispatcher/Heartbeat":    {code: passed},
			"Dispatcher/Session":      {code: passed},
			"RaftMembership/Join":     {code: passed},
			"Health/Check":            deny("no caller may call"),
		}},
		{"admin", &admin, map[string]want{
			"CA/GetRootCACertificate": {code: codes.OK},
			"CA/RenewNodeCertificate": deny("admin certificates may not call /shoal.v1.CA/RenewNodeCertificate"),
			"Control/GetCluster":      {code: codes.OK},
			"Control/CreateService":   {code: passed},
			"Control/WatchTasks":      {code: passed},
			"Dispatcher/Heartbeat":    deny("admin certificates may not call /shoal.v1.Dispatcher/Heartbeat"),
			"Dispatcher/Session":      deny("admin certificates may not call /shoal.v1.Dispatcher/Session"),
			"RaftMembership/Join":     deny("admin certificates may not call"),
			"Health/Check":            deny("no caller may call"),
		}},
		{"removed node", &removed, map[string]want{
			"CA/GetRootCACertificate": {code: codes.OK},
			"CA/RenewNodeCertificate": deny("node gone was removed from the cluster"),
			"Control/GetCluster":      deny("worker certificates may not call"),
			"Control/CreateService":   deny("worker certificates may not call"),
			"Control/WatchTasks":      deny("worker certificates may not call"),
			"Dispatcher/Heartbeat":    deny("node gone was removed from the cluster"),
			"Dispatcher/Session":      deny("node gone was removed from the cluster"),
			"RaftMembership/Join":     deny("worker certificates may not call"),
			"Health/Check":            deny("no caller may call"),
		}},
		{"replaced certificate", &replaced, map[string]want{
			"CA/GetRootCACertificate": {code: codes.OK},
			"CA/RenewNodeCertificate": deny("certificate " + replaced.ID.Serial + " of node w1 was replaced"),
			"Control/GetCluster":      deny("worker certificates may not call"),
			"Control/CreateService":   deny("worker certificates may not call"),
			"Control/WatchTasks":      deny("worker certificates may not call"),
			"Dispatcher/Heartbeat":    deny("was replaced"),
			"Dispatcher/Session":      deny("was replaced"),
			"RaftMembership/Join":     deny("worker certificates may not call"),
			"Health/Check":            deny("no caller may call"),
		}},
		{"expired certificate", &expired, denyAll},
		{"certificate of another CA", &stranger, denyAll},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := dialTLS(t, addr, tt.client, manager.Creds)
			for name, w := range tt.want {
				ctx, cancel := context.WithTimeout(context.Background(), settle)
				err := calls[name](ctx, cc)
				cancel()
				st := status.Convert(err)
				if st.Code() != w.code || !strings.Contains(st.Message(), w.msg) {
					t.Errorf("%s: %v %q, want %v %q", name, st.Code(), st.Message(), w.code, w.msg)
				}
			}
		})
	}
	if len(tests[0].want) != len(calls) {
		t.Fatalf("the table covers %d of %d calls", len(tests[0].want), len(calls))
	}

	// The handler sees the caller's identity.
	for _, c := range []struct {
		client identitytest.Issued
		want   string
	}{{manager, "manager/m1"}, {admin, "admin/admin"}} {
		resp, err := api.NewControlClient(dialTLS(t, addr, &c.client, manager.Creds)).GetCluster(context.Background(), &api.GetClusterRequest{})
		if err != nil || resp.GetCluster().GetId() != c.want {
			t.Errorf("handler saw %q, %v; want %q", resp.GetCluster().GetId(), err, c.want)
		}
	}
}

// TestLocalSocket: on the unix socket's server, peers without TLS are the
// local admin; on any other server they are refused.
func TestLocalSocket(t *testing.T) {
	stored, _ := identitytest.NewCA(t, "c1")
	n := newRaft(t, stored)
	dir := t.TempDir()

	serveUnix := func(path string, auth Authorizer) {
		lis, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(auth.ServerOptions()...)
		registerAll(srv, n)
		start(t, srv, lis)
	}
	dial := func(path string) *grpc.ClientConn {
		cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	local := identity.LocalIdentity("m1")
	localSock := filepath.Join(dir, "local.sock")
	serveUnix(localSock, Authorizer{Check: Checker(n.Store()), Local: &local})
	plainSock := filepath.Join(dir, "plain.sock")
	serveUnix(plainSock, Authorizer{Check: Checker(n.Store())})

	ctx, cancel := context.WithTimeout(context.Background(), settle)
	defer cancel()
	cc := dial(localSock)
	resp, err := api.NewControlClient(cc).GetCluster(ctx, &api.GetClusterRequest{})
	if err != nil || resp.GetCluster().GetId() != "admin/m1" {
		t.Fatalf("local GetCluster: %q, %v; want the local admin identity", resp.GetCluster().GetId(), err)
	}
	if err := calls["Control/WatchTasks"](ctx, cc); status.Code(err) != passed {
		t.Errorf("local WatchTasks: %v", err)
	}
	if err := calls["Dispatcher/Heartbeat"](ctx, cc); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "local socket may not call") {
		t.Errorf("local Heartbeat: %v", err)
	}

	cc = dial(plainSock)
	for _, name := range []string{"CA/GetRootCACertificate", "Control/GetCluster", "Dispatcher/Session"} {
		if err := calls[name](ctx, cc); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "without TLS are refused") {
			t.Errorf("plaintext %s: %v, want Unauthenticated", name, err)
		}
	}
}

func TestChecker(t *testing.T) {
	stored, r := identitytest.NewCA(t, "c1")
	n := newRaft(t, stored)
	current := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	addNode(t, n, current, "")
	old := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	gone := identitytest.IssueNode(t, r, "w2", api.NodeRole_NODE_ROLE_WORKER)
	addNode(t, n, gone, "")
	var w2 *api.Node
	n.Store().View(func(tx store.ReadTx) { w2 = tx.Node("w2") })
	if err := n.Propose(context.Background(), store.Remove(w2)); err != nil {
		t.Fatal(err)
	}
	admin := identitytest.IssueAdmin(t, r)
	recordAdmin(t, n, admin)
	unrecorded := identitytest.IssueAdmin(t, r)
	check := Checker(n.Store())
	tests := []struct {
		name string
		id   identity.Identity
		want string // "" = accepted
	}{
		{"current certificate", current.ID, ""},
		{"recorded admin", admin.ID, ""},
		{"unrecorded admin", unrecorded.ID, "admin certificate " + unrecorded.ID.Serial + " (admin) is not on record"},
		{"replaced serial", old.ID, "certificate " + old.ID.Serial + " of node w1 was replaced"},
		{"removed node", gone.ID, "node w2 was removed from the cluster"},
		{"no role", identity.Identity{NodeID: "w1", Serial: current.ID.Serial}, "no node role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := check(context.Background(), tt.id)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want PermissionDenied %q", err, tt.want)
			}
		})
	}
}

func TestPolicyTable(t *testing.T) {
	tests := []struct {
		method string
		anyone bool
		roles  []identity.Role
		known  bool
	}{
		{"/shoal.v1.CA/GetRootCACertificate", true, nil, true},
		{"/shoal.v1.CA/IssueNodeCertificate", true, nil, true},
		{"/shoal.v1.CA/RenewNodeCertificate", false, []identity.Role{identity.RoleWorker, identity.RoleManager}, true},
		{"/shoal.v1.CA/SomethingNew", false, nil, false},
		{"/shoal.v1.Control/RemoveNode", false, []identity.Role{identity.RoleAdmin, identity.RoleManager}, true},
		{"/shoal.v1.Dispatcher/Assignments", false, []identity.Role{identity.RoleWorker, identity.RoleManager}, true},
		{"/shoal.v1.RaftMembership/Leave", false, []identity.Role{identity.RoleManager}, true},
		{"/shoal.v1.Controlx/RemoveNode", false, nil, false},
		{"shoal.v1.Control/RemoveNode", false, nil, false},
		{"/shoal.v1.Control", false, nil, false},
		{"", false, nil, false},
	}
	for _, tt := range tests {
		p, ok := policyFor(tt.method)
		if ok != tt.known || p.anyone != tt.anyone {
			t.Errorf("%q: known %v anyone %v, want %v %v", tt.method, ok, p.anyone, tt.known, tt.anyone)
			continue
		}
		for _, r := range []identity.Role{identity.RoleUnknown, identity.RoleWorker, identity.RoleManager, identity.RoleAdmin} {
			want := false
			for _, x := range tt.roles {
				want = want || x == r
			}
			if p.allows(r) != want {
				t.Errorf("%q: %s allowed %v, want %v", tt.method, r, p.allows(r), want)
			}
		}
	}
}

func TestRaftALPN(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	m1 := identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	m2 := identitytest.IssueNode(t, r, "m2", api.NodeRole_NODE_ROLE_MANAGER)
	state, srvErr, cliErr := identitytest.Handshake(t, identity.ServerConfig(m1.Keypair(t), r.Pool()), identity.ClientConfig(m2.Keypair(t), r.Pool(), identity.ManagerServerName, identity.ALPNRaft))
	if srvErr != nil || cliErr != nil {
		t.Fatalf("server %v, client %v", srvErr, cliErr)
	}
	if state.NegotiatedProtocol != identity.ALPNRaft {
		t.Fatalf("ALPN %q, want %q", state.NegotiatedProtocol, identity.ALPNRaft)
	}
	// Without a store to check against, raft is refused: the cluster
	// port once had such an authorizer, and took any manager certificate.
	if _, err := (Authorizer{}).AuthorizeRaft(t.Context(), state); err == nil {
		t.Fatal("an authorizer without CheckRaft let a raft peer in")
	}
	a := Authorizer{CheckRaft: func(context.Context, identity.Identity, *x509.Certificate) error { return nil }}
	if id, err := a.AuthorizeRaft(t.Context(), state); err != nil || id.NodeID != "m2" {
		t.Fatalf("raft peer %+v, %v", id, err)
	}

	w := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	state, srvErr, cliErr = identitytest.Handshake(t, identity.ServerConfig(m1.Keypair(t), r.Pool()), identity.ClientConfig(w.Keypair(t), r.Pool(), identity.ManagerServerName, identity.ALPNRaft))
	if srvErr != nil || cliErr != nil {
		t.Fatalf("server %v, client %v", srvErr, cliErr)
	}
	if _, err := a.AuthorizeRaft(t.Context(), state); err == nil {
		t.Fatal("a worker may speak raft")
	}
}

// TestRaftChecker: a raft peer is refused on evidence that stays true as a
// lagging store catches up (removed, demoted with this very certificate,
// replaced by a newer one), and let through where the store may only be
// behind (unknown node, certificate newer than the record).
func TestRaftChecker(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	m := identitytest.IssueNode(t, r, "m2", api.NodeRole_NODE_ROLE_MANAGER)
	issued := m.Cert.NotBefore
	at := func(c *x509.Certificate, d time.Duration) *x509.Certificate {
		cc := *c
		cc.NotBefore, cc.NotAfter = c.NotBefore.Add(d), c.NotAfter.Add(d)
		return &cc
	}
	record := func(c *x509.Certificate, serial string) *api.NodeCertificate {
		rec := identity.CertificateRecord(c, api.NodeRole_NODE_ROLE_MANAGER)
		rec.Serial = serial
		return rec
	}
	node := func(role, desired api.NodeRole, cert *api.NodeCertificate) *api.Node {
		return &api.Node{Id: "m2", Role: role, Spec: &api.NodeSpec{DesiredRole: desired}, Certificate: cert}
	}
	const mgr, wkr = api.NodeRole_NODE_ROLE_MANAGER, api.NodeRole_NODE_ROLE_WORKER
	same := identity.CertificateRecord(m.Cert, mgr)
	tests := []struct {
		name    string
		node    *api.Node
		removed bool
		cert    *x509.Certificate
		want    string // "" lets it through
	}{
		{"current manager", node(mgr, mgr, same), false, m.Cert, ""},
		{"being promoted", node(wkr, mgr, same), false, m.Cert, ""},
		{"being demoted (hands over leadership)", node(mgr, wkr, same), false, m.Cert, ""},
		{"demoted, kept its manager certificate", node(wkr, wkr, same), false, m.Cert, "no longer a manager"},
		{"removed", nil, true, m.Cert, "was removed"},
		{"removed, record left behind", node(mgr, mgr, same), true, m.Cert, "was removed"},
		{"unknown to a lagging store", nil, false, m.Cert, ""},
		{"replaced by a newer certificate", node(wkr, wkr, record(at(m.Cert, time.Hour), "beef")), false, m.Cert, "was replaced"},
		{"replaced, still a manager", node(mgr, mgr, record(at(m.Cert, time.Hour), "beef")), false, m.Cert, "was replaced"},
		{"renewed after the store's record", node(wkr, wkr, record(at(m.Cert, -time.Hour), "beef")), false, m.Cert, ""},
		{"old record without not_before, newer certificate", node(wkr, wkr, &api.NodeCertificate{Serial: "beef", NotAfter: timestamppb.New(issued)}), false, m.Cert, ""},
		{"old record without not_before, older certificate", node(wkr, wkr, &api.NodeCertificate{Serial: "beef", NotAfter: timestamppb.New(m.Cert.NotAfter.Add(time.Hour))}), false, m.Cert, "was replaced"},
		{"no certificate on record", node(mgr, mgr, nil), false, m.Cert, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := store.New()
			var actions []*api.StoreAction
			cluster := &api.Cluster{Id: "c1", Spec: &api.ClusterSpec{Name: "default"}}
			if tt.removed {
				cluster.RemovedNodes = []*api.RemovedNode{{NodeId: "m2", NotAfter: timestamppb.New(m.Cert.NotAfter)}}
			}
			actions = append(actions, store.Create(cluster))
			if tt.node != nil {
				actions = append(actions, store.Create(tt.node))
			}
			if err := st.Apply(1, &api.Command{Actions: actions}); err != nil {
				t.Fatal(err)
			}
			err := RaftChecker(st)(t.Context(), m.ID, tt.cert)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want PermissionDenied %q", err, tt.want)
			}
		})
	}
}

// watchingControl's WatchTasks stays open until its context ends.
type watchingControl struct{ fakeControl }

func (watchingControl) WatchTasks(_ *api.WatchTasksRequest, s grpc.ServerStreamingServer[api.WatchTasksResponse]) error {
	<-s.Context().Done()
	return status.FromContextError(s.Context().Err()).Err()
}

// TestRevokedAdminStreamEnds: an admin's open stream ends with
// PermissionDenied once its certificate is revoked; another admin's stays
// open.
func TestRevokedAdminStreamEnds(t *testing.T) {
	stored, r := identitytest.NewCA(t, "c1")
	n := newRaft(t, stored)
	manager := identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	addNode(t, n, manager, "127.0.0.1:4242")
	revokedAdmin, keptAdmin := identitytest.IssueAdmin(t, r), identitytest.IssueAdmin(t, r)
	recordAdmin(t, n, revokedAdmin)
	recordAdmin(t, n, keptAdmin)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := manager.Creds.Pool()
	if err != nil {
		t.Fatal(err)
	}
	auth := Authorizer{Check: Checker(n.Store()), Recheck: 20 * time.Millisecond}
	srv := grpc.NewServer(append(auth.ServerOptions(), grpc.Creds(credentials.NewTLS(identity.ServerConfig(manager.Keypair(t), p))))...)
	api.RegisterControlServer(srv, watchingControl{})
	start(t, srv, lis)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func(admin *identitytest.Issued) <-chan error {
		s, err := api.NewControlClient(dialTLS(t, lis.Addr().String(), admin, manager.Creds)).WatchTasks(ctx, &api.WatchTasksRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ended := make(chan error, 1)
		go func() {
			_, err := s.Recv()
			ended <- err
		}()
		return ended
	}
	gone, kept := open(&revokedAdmin), open(&keptAdmin)
	select {
	case err := <-gone:
		t.Fatalf("the stream ended before the revocation: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := RevokeAdmin(ctx, n, revokedAdmin.ID.Serial); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-gone:
		if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "not on record") {
			t.Fatalf("the revoked admin's stream ended with %v %q; want PermissionDenied naming the revocation", st.Code(), st.Message())
		}
	case <-time.After(settle):
		t.Fatal("the revoked admin's stream stayed open")
	}
	select {
	case err := <-kept:
		t.Fatalf("the other admin's stream ended: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
}
