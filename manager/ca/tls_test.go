package ca

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// handshake runs one TLS connection over loopback and returns what each
// side saw. The server writes a byte after its handshake so that the
// client learns of a refusal that TLS 1.3 reports only after the client
// believes it is done.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (srvState tls.ConnectionState, srvErr, cliErr error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type result struct {
		state tls.ConnectionState
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(settle))
		s := tls.Server(c, serverCfg)
		if err := s.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		_, err = s.Write([]byte{1})
		done <- result{state: s.ConnectionState(), err: err}
	}()
	raw, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(settle))
	c := tls.Client(raw, clientCfg)
	cliErr = c.Handshake()
	if cliErr == nil {
		_, cliErr = io.ReadFull(c, make([]byte, 1))
	}
	c.Close()
	res := <-done
	return res.state, res.err, cliErr
}

func TestTLSHandshakes(t *testing.T) {
	_, r := newTestCA(t, "c1")
	_, other := newTestCA(t, "c2")
	manager := issueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	worker := issueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	admin := issueAdmin(t, r)
	now := time.Now()
	expired := issueWindow(t, r, "w2", RoleWorker, now.Add(-48*time.Hour), now.Add(-time.Hour))
	stranger := issueNode(t, other, "x1", api.NodeRole_NODE_ROLE_MANAGER)
	pool := r.Pool()

	tests := []struct {
		name       string
		server     issued
		client     *issued // nil: no client certificate
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
			srvCfg := ServerConfig(tt.server.keypair(t), pool)
			var kp *Keypair
			if tt.client != nil {
				kp = tt.client.keypair(t)
			}
			cliCfg := ClientConfig(kp, tt.clientPool, tt.serverName, ALPNGRPC)
			state, srvErr, cliErr := handshake(t, srvCfg, cliCfg)
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
	_, r := newTestCA(t, "c1")
	manager := issueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	cli := ClientConfig(nil, r.Pool(), ManagerServerName, ALPNGRPC)
	cli.MinVersion, cli.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, srvErr, cliErr := handshake(t, ServerConfig(manager.keypair(t), r.Pool()), cli); srvErr == nil || cliErr == nil {
		t.Fatalf("TLS 1.2 accepted: server %v, client %v", srvErr, cliErr)
	}
}

func TestRaftALPN(t *testing.T) {
	_, r := newTestCA(t, "c1")
	m1 := issueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	m2 := issueNode(t, r, "m2", api.NodeRole_NODE_ROLE_MANAGER)
	state, srvErr, cliErr := handshake(t, ServerConfig(m1.keypair(t), r.Pool()), ClientConfig(m2.keypair(t), r.Pool(), ManagerServerName, ALPNRaft))
	if srvErr != nil || cliErr != nil {
		t.Fatalf("server %v, client %v", srvErr, cliErr)
	}
	if state.NegotiatedProtocol != ALPNRaft {
		t.Fatalf("ALPN %q, want %q", state.NegotiatedProtocol, ALPNRaft)
	}
	a := Authorizer{}
	if id, err := a.AuthorizeRaft(t.Context(), state); err != nil || id.NodeID != "m2" {
		t.Fatalf("raft peer %+v, %v", id, err)
	}

	w := issueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	state, srvErr, cliErr = handshake(t, ServerConfig(m1.keypair(t), r.Pool()), ClientConfig(w.keypair(t), r.Pool(), ManagerServerName, ALPNRaft))
	if srvErr != nil || cliErr != nil {
		t.Fatalf("server %v, client %v", srvErr, cliErr)
	}
	if _, err := a.AuthorizeRaft(t.Context(), state); err == nil {
		t.Fatal("a worker may speak raft")
	}
}

// TestKeypairSwap checks that a renewed certificate is used from the next
// handshake on, without a new config.
func TestKeypairSwap(t *testing.T) {
	_, r := newTestCA(t, "c1")
	manager := issueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	first := issueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	second := issueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	kp := first.keypair(t)
	srv := ServerConfig(manager.keypair(t), r.Pool())
	cli := ClientConfig(kp, r.Pool(), ManagerServerName, ALPNGRPC)

	for _, want := range []issued{first, second} {
		if want.id.Serial == second.id.Serial {
			cert, err := second.creds.TLSCertificate()
			if err != nil {
				t.Fatal(err)
			}
			kp.Set(cert)
		}
		if SerialString(kp.Leaf()) != want.id.Serial {
			t.Fatalf("Leaf serial %s, want %s", SerialString(kp.Leaf()), want.id.Serial)
		}
		state, srvErr, cliErr := handshake(t, srv, cli)
		if srvErr != nil || cliErr != nil {
			t.Fatalf("server %v, client %v", srvErr, cliErr)
		}
		id, err := IdentityFromState(state)
		if err != nil || id.Serial != want.id.Serial {
			t.Fatalf("server saw %+v, %v; want serial %s", id, err, want.id.Serial)
		}
	}
}

func TestJoinConfig(t *testing.T) {
	_, r := newTestCA(t, "c1")
	_, other := newTestCA(t, "c2")
	manager := issueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	worker := issueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)
	strangerMgr := issueNode(t, other, "x1", api.NodeRole_NODE_ROLE_MANAGER)
	tests := []struct {
		name   string
		server issued
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
			_, srvErr, cliErr := handshake(t, ServerConfig(tt.server.keypair(t), r.Pool()), JoinConfig(tt.digest))
			if cliErr == nil != tt.wantOK {
				t.Fatalf("client err %v (server %v), want ok=%v", cliErr, srvErr, tt.wantOK)
			}
		})
	}
}
