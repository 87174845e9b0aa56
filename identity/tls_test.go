package identity_test

import (
	. "github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"

	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func TestTLSHandshakes(t *testing.T) {
	stored, r := identitytest.NewCA(t, "c1")
	_, other := identitytest.NewCA(t, "c2")
	manager := identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	worker := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	admin := identitytest.IssueAdmin(t, r)
	now := time.Now()
	expired := identitytest.IssueWindow(t, stored, "w2", RoleWorker, now.Add(-48*time.Hour), now.Add(-time.Hour))
	stranger := identitytest.IssueNode(t, other, "x1", api.NodeRole_NODE_ROLE_MANAGER)
	pool := r.Pool()

	tests := []struct {
		name       string
		server     identitytest.Issued
		client     *identitytest.Issued // nil: no client certificate
		serverName string
		clientPool *x509.CertPool
		wantOK     bool
		wantPeer   string // node id the server sees, when wantOK
	}{
		{"worker dials manager", manager, &worker, ManagerServerName, pool, true, "w1"},
		{"admin dials manager", manager, &admin, ManagerServerName, pool, true, "admin"},
		{"anonymous joiner dials manager", manager, nil, ManagerServerName, pool, true, ""},
		{"worker cannot pose as manager", worker, &manager, ManagerServerName, pool, false, ""},
		{"worker serves as a node", worker, &manager, NodeServerName, pool, true, "m1"},
		{"expired client certificate refused", manager, &expired, ManagerServerName, pool, false, ""},
		{"client certificate of another CA refused", manager, &stranger, ManagerServerName, pool, false, ""},
		{"server of another CA refused", stranger, &worker, ManagerServerName, pool, false, ""},
		{"client trusting another CA refuses server", manager, &worker, ManagerServerName, other.Pool(), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srvCfg := ServerConfig(tt.server.Keypair(t), pool)
			var kp *Keypair
			if tt.client != nil {
				kp = tt.client.Keypair(t)
			}
			cliCfg := ClientConfig(kp, tt.clientPool, tt.serverName, ALPNGRPC)
			state, srvErr, cliErr := identitytest.Handshake(t, srvCfg, cliCfg)
			if ok := srvErr == nil && cliErr == nil; ok != tt.wantOK {
				t.Fatalf("server err %v, client err %v; want ok=%v", srvErr, cliErr, tt.wantOK)
			}
			if !tt.wantOK {
				return
			}
			if state.Version != tls.VersionTLS13 || state.NegotiatedProtocol != ALPNGRPC {
				t.Errorf("version %x, ALPN %q", state.Version, state.NegotiatedProtocol)
			}
			id, err := IdentityFromState(state)
			switch {
			case tt.wantPeer == "" && err == nil:
				t.Errorf("anonymous peer has identity %+v", id)
			case tt.wantPeer != "" && (err != nil || id.NodeID != tt.wantPeer):
				t.Errorf("peer identity %+v, %v; want node %s", id, err, tt.wantPeer)
			}
		})
	}
}

func TestTLSRefusesOldVersions(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	manager := identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	cli := ClientConfig(nil, r.Pool(), ManagerServerName, ALPNGRPC)
	cli.MinVersion, cli.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, srvErr, cliErr := identitytest.Handshake(t, ServerConfig(manager.Keypair(t), r.Pool()), cli); srvErr == nil || cliErr == nil {
		t.Fatalf("TLS 1.2 accepted: server %v, client %v", srvErr, cliErr)
	}
}

// TestKeypairSwap checks that a renewed certificate is used from the next
// handshake on, without a new config.
func TestKeypairSwap(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	manager := identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	first := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	second := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	kp := first.Keypair(t)
	srv := ServerConfig(manager.Keypair(t), r.Pool())
	cli := ClientConfig(kp, r.Pool(), ManagerServerName, ALPNGRPC)

	for _, want := range []identitytest.Issued{first, second} {
		if want.ID.Serial == second.ID.Serial {
			cert, err := second.Creds.TLSCertificate()
			if err != nil {
				t.Fatal(err)
			}
			kp.Set(cert)
		}
		if SerialString(kp.Leaf()) != want.ID.Serial {
			t.Fatalf("Leaf serial %s, want %s", SerialString(kp.Leaf()), want.ID.Serial)
		}
		state, srvErr, cliErr := identitytest.Handshake(t, srv, cli)
		if srvErr != nil || cliErr != nil {
			t.Fatalf("server %v, client %v", srvErr, cliErr)
		}
		id, err := IdentityFromState(state)
		if err != nil || id.Serial != want.ID.Serial {
			t.Fatalf("server saw %+v, %v; want serial %s", id, err, want.ID.Serial)
		}
	}
}

func TestJoinConfig(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	_, other := identitytest.NewCA(t, "c2")
	manager := identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	worker := identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	strangerMgr := identitytest.IssueNode(t, other, "x1", api.NodeRole_NODE_ROLE_MANAGER)
	tests := []struct {
		name   string
		server identitytest.Issued
		digest string
		wantOK bool
	}{
		{"manager of the token's CA", manager, r.Digest, true},
		{"token names another CA", manager, other.Digest, false},
		{"manager of another CA", strangerMgr, r.Digest, false},
		{"worker posing as manager", worker, r.Digest, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, srvErr, cliErr := identitytest.Handshake(t, ServerConfig(tt.server.Keypair(t), r.Pool()), JoinConfig(tt.digest))
			if cliErr == nil != tt.wantOK {
				t.Fatalf("client err %v (server %v), want ok=%v", cliErr, srvErr, tt.wantOK)
			}
		})
	}
}
