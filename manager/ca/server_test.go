package ca

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
	"github.com/shoal-project/shoal/manager/store"
)

func TestIssueNodeCertificate(t *testing.T) {
	stored, r := identitytest.NewCA(t, "c1")
	otherStored, _ := identitytest.NewCA(t, "c2")
	n := newRaft(t, stored)
	addNode(t, n, identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER), "10.0.0.1:4242")
	ctx := context.Background()

	rotated := getCluster(n).GetJoinTokens().GetWorker()
	workerToken, err := RotateToken(ctx, n, api.NodeRole_NODE_ROLE_WORKER)
	if err != nil {
		t.Fatal(err)
	}
	if workerToken == rotated || getCluster(n).GetJoinTokens().GetWorker() != workerToken {
		t.Fatal("rotation did not replace the worker token")
	}
	managerToken := getCluster(n).GetJoinTokens().GetManager()
	foreign, _ := identity.GenerateToken(otherStored.GetDigest())
	guessed, _ := identity.GenerateToken(stored.GetDigest())
	_, csr, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}

	srv := NewServer(n, ServerOptions{Logger: quietLogger()})
	tests := []struct {
		name     string
		token    string
		csr      []byte
		addr     string
		wantCode codes.Code
		wantMsg  string
		wantRole api.NodeRole
		hostname string // default: one of its own per case
	}{
		{"worker token", workerToken, csr, "10.0.0.2:4242", codes.OK, "", api.NodeRole_NODE_ROLE_WORKER, ""},
		{"worker without advertise address", workerToken, csr, "", codes.OK, "", api.NodeRole_NODE_ROLE_WORKER, ""},
		{"manager token", managerToken, csr, "10.0.0.3:4242", codes.OK, "", api.NodeRole_NODE_ROLE_MANAGER, ""},
		{"rotated token", rotated, csr, "10.0.0.4:4242", codes.PermissionDenied, "rotated", 0, ""},
		{"guessed secret", guessed, csr, "10.0.0.4:4242", codes.PermissionDenied, "not accepted", 0, ""},
		{"token of another cluster", foreign, csr, "10.0.0.4:4242", codes.PermissionDenied, "another cluster", 0, ""},
		{"malformed token", "SHOAL-1-abc", csr, "10.0.0.4:4242", codes.InvalidArgument, "malformed", 0, ""},
		{"no token", "", csr, "10.0.0.4:4242", codes.InvalidArgument, "malformed", 0, ""},
		{"bad CSR", workerToken, []byte("nope"), "10.0.0.4:4242", codes.InvalidArgument, "CSR", 0, ""},
		{"manager without advertise address", managerToken, csr, "", codes.InvalidArgument, "advertise_addr", 0, ""},
		{"bad advertise address", workerToken, csr, "10.0.0.4", codes.InvalidArgument, "host:port", 0, ""},
		{"multicast advertise address", workerToken, csr, "224.0.0.1:4242", codes.InvalidArgument, "multicast", 0, ""},
		{"unspecified advertise address", workerToken, csr, "0.0.0.0:4242", codes.InvalidArgument, "unspecified", 0, ""},
		{"another node's hostname", workerToken, csr, "10.0.0.5:4242", codes.AlreadyExists, "hostname \"HOST-0\" is taken", 0, "HOST-0"},
		{"hostname that is no DNS name", workerToken, csr, "10.0.0.5:4242", codes.InvalidArgument, "hostname", 0, "-bad host"},
	}
	for i, tt := range tests {
		desc := &api.NodeDescription{Hostname: fmt.Sprintf("host-%d", i), Os: "linux", Arch: "amd64"}
		if tt.hostname != "" {
			desc.Hostname = tt.hostname
		}
		t.Run(tt.name, func(t *testing.T) {
			before := countNodes(n)
			resp, err := srv.IssueNodeCertificate(ctx, &api.IssueNodeCertificateRequest{
				Token: tt.token, CsrPem: tt.csr, Description: desc, AdvertiseAddr: tt.addr,
			})
			st := status.Convert(err)
			if st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("%v %q, want %v %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			if tt.token != "" && len(tt.token) > 20 && strings.Contains(st.Message(), tt.token[strings.LastIndex(tt.token, "-")+1:]) {
				t.Fatalf("error %q echoes the token's secret", st.Message())
			}
			if tt.wantCode != codes.OK {
				if got := countNodes(n); got != before {
					t.Fatalf("a refused join left %d nodes, had %d", got, before)
				}
				return
			}
			if got := countNodes(n); got != before+1 {
				t.Fatalf("%d nodes after a join, had %d", got, before)
			}
			if resp.GetRole() != tt.wantRole || !slices.Equal(resp.GetManagers(), []string{"10.0.0.1:4242"}) {
				t.Errorf("role %v, managers %v", resp.GetRole(), resp.GetManagers())
			}
			cert, err := identity.ParseCertificatePEM(resp.GetCertPem())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: r.Pool()}); err != nil {
				t.Errorf("identitytest.Issued certificate does not verify: %v", err)
			}
			id, err := identity.IdentityOf(cert)
			if err != nil || id.NodeID != resp.GetNodeId() || id.Role != identity.RoleOf(tt.wantRole) || id.ClusterID != "c1" {
				t.Errorf("certificate identity %+v, %v", id, err)
			}
			node := getNode(n, resp.GetNodeId())
			want := &api.Node{
				Id:            resp.GetNodeId(),
				Meta:          node.GetMeta(),
				Spec:          &api.NodeSpec{DesiredRole: tt.wantRole, Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
				Description:   desc,
				Status:        &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN, Addr: tt.addr},
				Role:          tt.wantRole,
				Certificate:   certRecord(cert, tt.wantRole, r, getCluster(n)),
				AdvertiseAddr: tt.addr,
			}
			if tt.wantRole == api.NodeRole_NODE_ROLE_MANAGER {
				want.ManagerStatus = &api.ManagerStatus{RaftAddr: tt.addr}
			}
			if !proto.Equal(node, want) {
				t.Errorf("node\n%v\nwant\n%v", node, want)
			}
		})
	}
	var managers []string
	n.Store().View(func(tx store.ReadTx) { managers = ManagerAddrs(tx) })
	if !slices.Equal(managers, []string{"10.0.0.1:4242", "10.0.0.3:4242"}) {
		t.Errorf("managers after joins: %v", managers)
	}
}

func TestRenewNodeCertificate(t *testing.T) {
	stored, r := identitytest.NewCA(t, "c1")
	n := newRaft(t, stored)
	w := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	addNode(t, n, w, "10.0.0.2:4242")
	srv := NewServer(n, ServerOptions{Logger: quietLogger()})
	ctx := context.Background()
	check := Checker(n.Store())

	renew := func(id identity.Identity) (*api.RenewNodeCertificateResponse, error) {
		_, csr, err := identity.NewKeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		return srv.RenewNodeCertificate(identity.WithIdentity(ctx, id), &api.RenewNodeCertificateRequest{CsrPem: csr})
	}

	// Same role: a new serial is recorded and the old certificate stops
	// working.
	resp, err := renew(w.ID)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := identity.ParseCertificatePEM(resp.GetCertPem())
	next, _ := identity.IdentityOf(cert)
	if next.NodeID != "w1" || next.Role != identity.RoleWorker || next.Serial == w.ID.Serial || resp.GetRole() != api.NodeRole_NODE_ROLE_WORKER {
		t.Fatalf("renewed identity %+v, role %v", next, resp.GetRole())
	}
	if rec := getNode(n, "w1").GetCertificate(); rec.GetSerial() != next.Serial || !rec.GetNotAfter().AsTime().Equal(cert.NotAfter) {
		t.Fatalf("recorded certificate %v, want serial %s", rec, next.Serial)
	}
	if err := check(ctx, w.ID); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("old certificate after renewal: %v", err)
	}
	if err := check(ctx, next); err != nil {
		t.Fatalf("new certificate refused: %v", err)
	}
	if _, err := renew(w.ID); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "was replaced") {
		t.Fatalf("renewal with the old certificate: %v", err)
	}

	// Promotion: the operator set desired_role; the renewal carries it.
	node := proto.Clone(getNode(n, "w1")).(*api.Node)
	node.Spec.DesiredRole = api.NodeRole_NODE_ROLE_MANAGER
	if err := n.Propose(ctx, store.Update(node)); err != nil {
		t.Fatal(err)
	}
	resp, err = renew(next)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = identity.ParseCertificatePEM(resp.GetCertPem())
	promoted, _ := identity.IdentityOf(cert)
	if promoted.Role != identity.RoleManager || resp.GetRole() != api.NodeRole_NODE_ROLE_MANAGER || !slices.Contains(cert.DNSNames, identity.ManagerServerName) {
		t.Fatalf("promoted renewal: %+v, names %v", promoted, cert.DNSNames)
	}
	if rec := getNode(n, "w1").GetCertificate(); rec.GetRole() != api.NodeRole_NODE_ROLE_MANAGER || rec.GetSerial() != promoted.Serial {
		t.Fatalf("recorded %v", rec)
	}

	tests := []struct {
		name string
		id   identity.Identity
		csr  []byte
		code codes.Code
		msg  string
	}{
		{"admin", identitytest.IssueAdmin(t, r).ID, nil, codes.PermissionDenied, "not renewed"},
		{"unknown node", identitytest.IssueNode(t, r, "ghost", api.NodeRole_NODE_ROLE_WORKER).ID, nil, codes.PermissionDenied, "removed"},
		{"bad CSR", promoted, []byte("x"), codes.InvalidArgument, "CSR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := getNode(n, "w1").GetCertificate().GetSerial()
			_, err := srv.RenewNodeCertificate(identity.WithIdentity(ctx, tt.id), &api.RenewNodeCertificateRequest{CsrPem: tt.csr})
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err %v, want %v %q", err, tt.code, tt.msg)
			}
			if getNode(n, "w1").GetCertificate().GetSerial() != before {
				t.Fatal("a refused renewal changed the record")
			}
		})
	}
	if _, err := srv.RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("renewal without identity: %v", err)
	}
}

func TestRotateToken(t *testing.T) {
	stored, _ := identitytest.NewCA(t, "c1")
	n := newRaft(t, stored)
	ctx := context.Background()
	for _, role := range []api.NodeRole{api.NodeRole_NODE_ROLE_WORKER, api.NodeRole_NODE_ROLE_MANAGER} {
		before := proto.Clone(getCluster(n).GetJoinTokens()).(*api.JoinTokens)
		tok, err := RotateToken(ctx, n, role)
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := identity.ParseToken(tok)
		if err != nil || parsed.Digest != stored.GetDigest() {
			t.Fatalf("rotated token %+v, %v", parsed, err)
		}
		after := getCluster(n).GetJoinTokens()
		changed, kept := after.GetWorker(), after.GetManager()
		oldChanged, oldKept := before.GetWorker(), before.GetManager()
		if role == api.NodeRole_NODE_ROLE_MANAGER {
			changed, kept, oldChanged, oldKept = kept, changed, oldKept, oldChanged
		}
		if changed != tok || changed == oldChanged || kept != oldKept {
			t.Fatalf("%v rotation: tokens %v, before %v", role, after, before)
		}
	}
	if _, err := RotateToken(ctx, n, api.NodeRole_NODE_ROLE_UNSPECIFIED); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("rotate without role: %v", err)
	}
}

// TestJoinOverTLS walks a node through joining as shoald would: dial a
// manager trusting only the token's digest, check the CA, send the CSR,
// then use, renew and lose the certificate.
func TestJoinOverTLS(t *testing.T) {
	stored, r := identitytest.NewCA(t, "c1")
	n := newRaft(t, stored)
	manager := identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	addNode(t, n, manager, "127.0.0.1:4242")
	addr := serveTLS(t, n, manager, manager.Creds)
	ctx := context.Background()

	tok, err := identity.ParseToken(getCluster(n).GetJoinTokens().GetWorker())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.JoinConfig(tok.Digest))))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	caClient := api.NewCAClient(cc)
	root, err := caClient.GetRootCACertificate(ctx, &api.GetRootCACertificateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.VerifyRootCA(root.GetCertPem(), tok.Digest); err != nil {
		t.Fatal(err)
	}
	keyPEM, csr, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := caClient.IssueNodeCertificate(ctx, &api.IssueNodeCertificateRequest{Token: tok.String(), CsrPem: csr, AdvertiseAddr: "127.0.0.1:5000"})
	if err != nil {
		t.Fatal(err)
	}
	creds := identity.Credentials{CACertPEM: root.GetCertPem(), CertPEM: resp.GetCertPem(), KeyPEM: keyPEM}
	dir := t.TempDir()
	if err := identity.SaveCredentials(dir, creds); err != nil {
		t.Fatal(err)
	}
	if creds, err = identity.LoadCredentials(dir); err != nil {
		t.Fatal(err)
	}
	first := identitytest.Issued{Creds: creds}
	first.ID, _ = creds.Identity()
	if first.ID.NodeID != resp.GetNodeId() {
		t.Fatalf("identity %+v, node id %s", first.ID, resp.GetNodeId())
	}

	oldConn := dialTLS(t, addr, &first, creds)
	if err := calls["Dispatcher/Heartbeat"](ctx, oldConn); status.Code(err) != passed {
		t.Fatalf("new node's heartbeat: %v", err)
	}

	// Renew over the node's own connection.
	keyPEM, csr, _ = identity.NewKeyAndCSR()
	renewed, err := api.NewCAClient(oldConn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{CsrPem: csr})
	if err != nil {
		t.Fatal(err)
	}
	second := identitytest.Issued{Creds: identity.Credentials{CACertPEM: creds.CACertPEM, CertPEM: renewed.GetCertPem(), KeyPEM: keyPEM}}
	second.ID, _ = second.Creds.Identity()
	if err := calls["Dispatcher/Heartbeat"](ctx, oldConn); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "was replaced") {
		t.Fatalf("heartbeat with the replaced certificate: %v", err)
	}
	newConn := dialTLS(t, addr, &second, creds)
	if err := calls["Dispatcher/Heartbeat"](ctx, newConn); status.Code(err) != passed {
		t.Fatalf("heartbeat with the renewed certificate: %v", err)
	}

	// The operator removes the node.
	if err := n.Propose(ctx, store.Remove(getNode(n, first.ID.NodeID))); err != nil {
		t.Fatal(err)
	}
	if err := calls["Dispatcher/Heartbeat"](ctx, newConn); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "removed from the cluster") {
		t.Fatalf("heartbeat of a removed node: %v", err)
	}
}
