package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/worker"
)

// These tests run managers in this process the way shoald does (the same
// node, listener, authorizer and manager wiring, real TLS on loopback and
// real hashicorp/raft), without containerd: a manager's worker half is
// not started.

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// freeAddr is a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// testManager is one manager node serving its cluster port.
type testManager struct {
	t      *testing.T
	n      *node
	creds  identity.Credentials
	cancel context.CancelFunc
	wg     sync.WaitGroup
	srv    *grpc.Server
	once   sync.Once
}

func testNodeConfig(t *testing.T) Config {
	// No heartbeats in these tests: a node is ready from its session
	// until the test ends.
	cfg := Config{DataDir: t.TempDir(), Logger: quietLogger(), HeartbeatPeriod: time.Hour}
	cfg.defaults()
	return cfg
}

// serve runs the node's manager as serve does, until stop.
func (m *testManager) serve() {
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	errc := make(chan error, 4)
	m.srv = m.n.serveManager(ctx, &m.wg, errc)
	m.t.Cleanup(m.stop)
}

func (m *testManager) stop() {
	m.once.Do(func() {
		m.cancel()
		m.srv.Stop()
		m.n.listener.Close()
		m.wg.Wait()
		m.n.closeConns()
		m.n.mgr.Close()
	})
}

func (m *testManager) id() string   { return m.n.file.NodeID }
func (m *testManager) addr() string { return m.n.file.AdvertiseAddr }
func (m *testManager) raft() *raft.Raft {
	return m.n.mgr.State().Raft()
}

func (m *testManager) view(fn func(tx store.ReadTx)) { m.n.mgr.State().Store().View(fn) }

// foundCluster starts the first manager, as `shoald init` does.
func foundCluster(t *testing.T) (*testManager, *ca.Founding) {
	t.Helper()
	adv := freeAddr(t)
	file := nodeFile{NodeID: api.NewID(), ListenAddr: adv, AdvertiseAddr: adv}
	file.setManagers([]*api.ManagerNode{{NodeId: file.NodeID, Addr: adv}})
	founding, err := ca.Found(file.NodeID, adv, &api.NodeDescription{Hostname: "m1", Os: "linux", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := newNode(testNodeConfig(t), file, founding.Credentials)
	if err != nil {
		t.Fatal(err)
	}
	sl, err := n.listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	n.mgr, err = manager.Init(ctx, n.managerConfig(sl), founding.Cluster, founding.Node, manager.Ingress{})
	if err != nil {
		n.listener.Close()
		t.Fatal(err)
	}
	m := &testManager{t: t, n: n, creds: founding.Credentials}
	m.serve()
	return m, founding
}

// joinNode runs the join handshake through the manager at via, as
// `shoald join` does, and returns the node it makes (not serving).
func joinNode(t *testing.T, token, via, hostname string) (*node, worker.Joined) {
	t.Helper()
	tok, err := identity.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	adv := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	admitted, err := worker.Join(ctx, worker.JoinRequest{Manager: via, Token: tok, AdvertiseAddr: adv,
		Description: &api.NodeDescription{Hostname: hostname, Os: "linux", Arch: "amd64"}})
	if err != nil {
		t.Fatal(err)
	}
	file := nodeFile{NodeID: admitted.NodeID, ListenAddr: adv, AdvertiseAddr: adv}
	file.setManagers(admitted.ManagerNodes)
	n, err := newNode(testNodeConfig(t), file, admitted.Credentials)
	if err != nil {
		t.Fatal(err)
	}
	return n, admitted
}

// joinManager joins a manager and has it join raft.
func joinManager(t *testing.T, cluster *api.Cluster, via *testManager, hostname string) *testManager {
	t.Helper()
	n, admitted := joinNode(t, cluster.GetJoinTokens().GetManager(), via.addr(), hostname)
	sl, err := n.listen()
	if err != nil {
		t.Fatal(err)
	}
	if n.mgr, err = manager.Join(n.managerConfig(sl)); err != nil {
		n.listener.Close()
		t.Fatal(err)
	}
	m := &testManager{t: t, n: n, creds: admitted.Credentials}
	m.serve()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.joinRaft(ctx, admitted.Managers)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return m
}

// controlClient is an operator's shoalctl against a manager's cluster port.
func controlClient(t *testing.T, admin identity.Credentials, addr string) api.ControlClient {
	t.Helper()
	kp, err := admin.Keypair()
	if err != nil {
		t.Fatal(err)
	}
	roots, err := admin.Pool()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(
		identity.ClientConfig(kp, roots, identity.ManagerServerName, identity.ALPNGRPC))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return api.NewControlClient(conn)
}

func raftTLS(t *testing.T, creds identity.Credentials) *tls.Config {
	t.Helper()
	kp, err := creds.Keypair()
	if err != nil {
		t.Fatal(err)
	}
	roots, err := creds.Pool()
	if err != nil {
		t.Fatal(err)
	}
	return identity.ClientConfig(kp, roots, identity.ManagerServerName, identity.ALPNRaft)
}

// dialRaft opens a raw raft connection to addr with creds.
func dialRaft(t *testing.T, creds identity.Credentials, addr string) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, raftTLS(t, creds))
	if err != nil {
		t.Fatalf("TLS to %s on the raft ALPN: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByPeer reports whether the peer closed c (rather than leaving it
// open and silent for a while).
func closedByPeer(c net.Conn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func raftStat(t *testing.T, r *raft.Raft, key string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(r.Stats()[key], 10, 64)
	if err != nil {
		t.Fatalf("raft stat %s: %v", key, err)
	}
	return v
}

// TestExManagerIsRefused: a manager that was demoted and then removed
// keeps its key and its manager certificate, valid for months. Dialling
// every remaining manager on the raft ALPN with it, RequestVote and
// AppendEntries with a higher term are refused, and neither the managers'
// term nor their store moves; an open raft connection of it is cut when
// it is demoted; and a worker does not take it for a manager.
func TestExManagerIsRefused(t *testing.T) {
	m1, founding := foundCluster(t)
	cluster := founding.Cluster
	m2 := joinManager(t, cluster, m1, "m2")
	m3 := joinManager(t, cluster, m1, "m3")
	managers := []*testManager{m1, m2, m3}
	await.For(t, "three managers in raft and in every store", func() (bool, string) {
		members, err := m1.n.mgr.State().Members()
		if err != nil || len(members) != 3 {
			return false, "members: " + strconv.Itoa(len(members))
		}
		for _, m := range managers {
			var n int
			m.view(func(tx store.ReadTx) { n = len(ca.ManagerNodes(tx)) })
			if n != 3 {
				return false, m.n.file.AdvertiseAddr + " knows " + strconv.Itoa(n) + " managers"
			}
		}
		return true, ""
	})
	// The ex-manager's key, certificate and address, kept.
	exCreds, exID, exAddr := m3.creds, m3.id(), m3.addr()

	// A raft connection it holds open before it is demoted: accepted,
	// then cut once the store says it is no longer a manager.
	open := dialRaft(t, exCreds, m2.addr())
	if closedByPeer(open, 300*time.Millisecond) {
		t.Fatal("a current manager's raft connection was refused")
	}

	// A worker of the cluster, whose manager list comes from a session.
	wnode, _ := joinNode(t, cluster.GetJoinTokens().GetWorker(), m1.addr(), "w1")
	pool := wnode.managerPool()
	t.Cleanup(pool.Close)
	wsess := openSession(t, pool, wnode.file.NodeID)

	// Every manager's node is up (the quorum check of a demotion asks).
	for _, m := range managers {
		p := m.n.managerPool()
		t.Cleanup(p.Close)
		openSession(t, p, m.id())
	}

	// Demote m3, then remove it, through the control API.
	ctl := controlClient(t, founding.Admin, m1.addr())
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	var spec *api.NodeSpec
	m1.view(func(tx store.ReadTx) { spec = proto.Clone(tx.Node(exID).GetSpec()).(*api.NodeSpec) })
	spec.DesiredRole = api.NodeRole_NODE_ROLE_WORKER
	if _, err := ctl.UpdateNode(ctx, &api.UpdateNodeRequest{Node: exID, Spec: spec}); err != nil {
		t.Fatalf("demote: %v", err)
	}
	await.For(t, "m3 out of raft and a worker in the stores", func() (bool, string) {
		members, err := m1.n.mgr.State().Members()
		if _, in := members[exID]; err != nil || in {
			return false, "still a raft member"
		}
		for _, m := range []*testManager{m1, m2} {
			var role api.NodeRole
			m.view(func(tx store.ReadTx) { role = tx.Node(exID).GetRole() })
			if role != api.NodeRole_NODE_ROLE_WORKER {
				return false, m.addr() + " has it as " + role.String()
			}
		}
		return true, ""
	})
	await.For(t, "the demoted manager's open raft connection cut", func() (bool, string) {
		return closedByPeer(open, 50*time.Millisecond), "still open"
	})
	// The node restarts as a worker (here: stops), and is removed.
	m3.stop()
	if _, err := ctl.RemoveNode(ctx, &api.RemoveNodeRequest{Node: exID, Force: true}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	await.For(t, "m3 removed from every store", func() (bool, string) {
		for _, m := range []*testManager{m1, m2} {
			var gone, recorded bool
			m.view(func(tx store.ReadTx) {
				gone = tx.Node(exID) == nil
				for _, r := range tx.Cluster().GetRemovedNodes() {
					recorded = recorded || r.GetNodeId() == exID
				}
			})
			if !gone || !recorded {
				return false, m.addr() + " still has it, or no record of its removal"
			}
		}
		return true, ""
	})

	// The ex-manager speaks raft to every remaining manager, with a
	// higher term, as a candidate and as a leader.
	layer := state.NewStreamLayer(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, raftTLS(t, exCreds))
	tr := raft.NewNetworkTransport(layer, 1, 2*time.Second, io.Discard)
	defer tr.Close()
	header := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(exID), Addr: []byte(exAddr)}
	for _, m := range []*testManager{m1, m2} {
		r := m.raft()
		term := raftStat(t, r, "term")
		lastIndex, lastTerm := raftStat(t, r, "last_log_index"), raftStat(t, r, "last_log_term")
		var services int
		m.view(func(tx store.ReadTx) { services = len(tx.Services()) })

		vote := &raft.RequestVoteRequest{RPCHeader: header, Term: term + 1,
			LastLogIndex: lastIndex + 100, LastLogTerm: term + 1, LeadershipTransfer: true}
		var voteResp raft.RequestVoteResponse
		if err := tr.RequestVote(raft.ServerID(m.id()), raft.ServerAddress(m.addr()), vote, &voteResp); err == nil {
			t.Errorf("%s answered the ex-manager's RequestVote (term %d, granted %v)", m.addr(), voteResp.Term, voteResp.Granted)
		}

		evil, err := proto.Marshal(&api.Command{Actions: []*api.StoreAction{store.Create(&api.Service{
			Id: "ex-manager", Spec: &api.ServiceSpec{Name: "ex-manager"}})}})
		if err != nil {
			t.Fatal(err)
		}
		appendReq := &raft.AppendEntriesRequest{RPCHeader: header, Term: term + 1,
			PrevLogEntry: lastIndex, PrevLogTerm: lastTerm, LeaderCommitIndex: lastIndex + 1,
			Entries: []*raft.Log{{Index: lastIndex + 1, Term: term + 1, Type: raft.LogCommand, Data: evil}}}
		var appendResp raft.AppendEntriesResponse
		if err := tr.AppendEntries(raft.ServerID(m.id()), raft.ServerAddress(m.addr()), appendReq, &appendResp); err == nil {
			t.Errorf("%s answered the ex-manager's AppendEntries (term %d, success %v)", m.addr(), appendResp.Term, appendResp.Success)
		}

		if now := raftStat(t, r, "term"); now != term {
			t.Errorf("%s: term %d after the ex-manager's RPCs, was %d", m.addr(), now, term)
		}
		m.view(func(tx store.ReadTx) {
			if tx.Service("ex-manager") != nil || len(tx.Services()) != services {
				t.Errorf("%s: the ex-manager's entry reached the store", m.addr())
			}
		})
	}
	if t.Failed() {
		return
	}

	// Workers: the leader sends the worker's open session the new manager
	// list, without the ex-manager, as it sends it to every worker...
	for {
		msg, err := wsess.Recv()
		if err != nil {
			t.Fatalf("worker session: %v", err)
		}
		if !slices.ContainsFunc(msg.GetManagerNodes(), func(m *api.ManagerNode) bool { return m.GetNodeId() == exID }) {
			pool.Update(msg.GetManagerNodes()) // as the agent does
			break
		}
	}
	// ... and the ex-manager serves "manager" APIs at its old address
	// with its kept certificate; a worker sent there (a stale list, a
	// forged leader hint) does not open a session with it.
	fake := &recordingDispatcher{}
	serveAs(t, exCreds, exAddr, fake)
	conn, _, err := pool.Conn(ctx, exAddr)
	if err == nil {
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		var sess grpc.ServerStreamingClient[api.SessionMessage]
		sess, err = api.NewDispatcherClient(conn).Session(sctx, &api.SessionRequest{NodeId: wnode.file.NodeID})
		if err == nil {
			_, err = sess.Recv()
		}
		scancel()
	}
	if err == nil || fake.sessions.Load() != 0 {
		t.Fatalf("a worker opened a session with the ex-manager (err %v, sessions %d)", err, fake.sessions.Load())
	}
	// The remaining managers are still trusted.
	openSession(t, pool, wnode.file.NodeID)
}

// openSession opens a dispatcher session through pool, as the worker's
// agent does, and takes the manager list it sends first. The session
// stays open until the test ends (at most await.Settle).
func openSession(t *testing.T, pool *worker.ManagerPool, nodeID string) grpc.ServerStreamingClient[api.SessionMessage] {
	t.Helper()
	// Bounded: a test waiting for a message that never comes fails.
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	t.Cleanup(cancel)
	var (
		first *api.SessionMessage
		sess  grpc.ServerStreamingClient[api.SessionMessage]
	)
	await.For(t, "a session with the leader", func() (bool, string) {
		conn, _, err := pool.Conn(ctx, "")
		if err != nil {
			return false, err.Error()
		}
		sess, err = api.NewDispatcherClient(conn).Session(ctx, &api.SessionRequest{NodeId: nodeID})
		if err == nil {
			first, err = sess.Recv()
		}
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	pool.Update(first.GetManagerNodes())
	return sess
}

// recordingDispatcher counts the sessions opened with it.
type recordingDispatcher struct {
	api.UnimplementedDispatcherServer
	sessions atomic.Int32
}

func (d *recordingDispatcher) Session(*api.SessionRequest, grpc.ServerStreamingServer[api.SessionMessage]) error {
	d.sessions.Add(1)
	return nil
}

// serveAs serves a dispatcher at addr with creds' certificate.
func serveAs(t *testing.T, creds identity.Credentials, addr string, d api.DispatcherServer) {
	t.Helper()
	kp, err := creds.Keypair()
	if err != nil {
		t.Fatal(err)
	}
	roots, err := creds.Pool()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(identity.ServerConfig(kp, roots))))
	api.RegisterDispatcherServer(srv, d)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
}
