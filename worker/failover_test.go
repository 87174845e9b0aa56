package worker

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
	"github.com/shoal-project/shoal/internal/await"
)

// blackhole is a TCP proxy that can stop forwarding without closing
// anything: what a manager looks like once it is SIGSTOPped, or once the
// network drops its packets. Connections stay open, bytes vanish, and a
// new connection is accepted and then ignored.
type blackhole struct {
	lis    net.Listener
	target string

	mu      sync.Mutex
	dropped bool
	conns   []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{lis: lis, target: target}
	go b.serve()
	t.Cleanup(b.close)
	return b
}

func (b *blackhole) addr() string { return b.lis.Addr().String() }

func (b *blackhole) drop() {
	b.mu.Lock()
	b.dropped = true
	b.mu.Unlock()
}

func (b *blackhole) isDropped() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped
}

func (b *blackhole) track(c net.Conn) {
	b.mu.Lock()
	b.conns = append(b.conns, c)
	b.mu.Unlock()
}

func (b *blackhole) close() {
	b.lis.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		c.Close()
	}
}

func (b *blackhole) serve() {
	for {
		c, err := b.lis.Accept()
		if err != nil {
			return
		}
		b.track(c)
		if b.isDropped() {
			go io.Copy(io.Discard, c) // held open, never answered
			continue
		}
		up, err := net.Dial("tcp", b.target)
		if err != nil {
			c.Close()
			continue
		}
		b.track(up)
		go b.pipe(up, c)
		go b.pipe(c, up)
	}
}

// pipe forwards src to dst until the hole opens; from then on it reads
// and discards, and closes nothing.
func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if b.isDropped() {
			if err != nil {
				return
			}
			continue
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// serveTLS serves d on the cluster port's TLS and keepalive policy, as a
// manager does, and returns its address.
func serveTLS(t *testing.T, d *fakeDispatcher, mgr identitytest.Issued, roots *identity.RootCA) string {
	t.Helper()
	opts := append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(identity.ServerConfig(mgr.Keypair(t), roots.Pool())))}, identity.KeepaliveServerOptions()...)
	srv := grpc.NewServer(opts...)
	api.RegisterDispatcherServer(srv, d)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// TestAgentLeavesSilentManager: the manager a worker is in session with
// stops answering without closing its connection (black-holed). The
// worker must be in session with another manager within two heartbeat
// graces, before the new leader would have marked it down and moved its
// tasks; TCP alone would keep it waiting for minutes.
func TestAgentLeavesSilentManager(t *testing.T) {
	const grace = 500 * time.Millisecond
	_, root := identitytest.NewCA(t, "cluster1")
	mgr := identitytest.IssueNode(t, root, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	node := identitytest.IssueNode(t, root, "node1", api.NodeRole_NODE_ROLE_WORKER)
	kp := node.Keypair(t)

	leader, next := newFakeDispatcher(), newFakeDispatcher()
	leader.grace, next.grace = grace, grace
	hole := newBlackhole(t, serveTLS(t, leader, mgr, root))
	nextAddr := serveTLS(t, next, mgr, root)

	dial := func(addr string, _ func(identity.Identity) error) (*grpc.ClientConn, error) {
		return grpc.NewClient(addr,
			grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientConfig(kp, root.Pool(), identity.ManagerServerName, identity.ALPNGRPC))),
			identity.KeepaliveDialOption())
	}
	pool := NewManagerPool(ManagerNodes([]string{hole.addr(), nextAddr}), dial, nil)
	t.Cleanup(pool.Close)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	exe := newFakeExecutor()
	agent := New(Config{NodeID: "node1", Executor: exe, Managers: pool, Logger: logger})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = agent.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	leader.full(t, 1, task("t1", stAssigned, stRunning))
	leader.waitState(t, "t1", stRunning)
	await.For(t, "heartbeats to the leader", func() bool { return leader.heartbeatCount() >= 2 })

	hole.drop()
	lost := time.Now()
	await.For(t, "a session with the other manager", func() bool { return next.sessionCount() > 0 })
	took := time.Since(lost)
	await.For(t, "heartbeats to the other manager", func() bool { return next.heartbeatCount() >= 2 })
	if took > 2*grace {
		t.Errorf("the worker took %v to open a session with another manager; want within two graces (%v)", took, 2*grace)
	}
	t.Logf("in session with the other manager %v after the leader went silent", took)
	// The task was never touched: only a session moved.
	next.full(t, 1, task("t1", stRunning, stRunning))
	if v := exe.verbs("t1"); len(v) != 3 {
		t.Errorf("executor calls = %v, want the task left running (prepare, start, wait)", v)
	}
}

// TestManagerPoolPassesOverSilent: a manager that went silent is skipped
// in turn, and even when a follower names it as the leader, while the
// others are tried; when all are silent the pool still answers.
func TestManagerPoolPassesOverSilent(t *testing.T) {
	dial := func(addr string, _ func(identity.Identity) error) (*grpc.ClientConn, error) {
		return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(nil)))
	}
	pool := NewManagerPool(ManagerNodes([]string{"a:1", "b:1", "c:1"}), dial, nil)
	t.Cleanup(pool.Close)
	ctx := context.Background()
	addr := func(hint string) string {
		t.Helper()
		_, a, err := pool.Conn(ctx, hint)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, want := range []string{"a:1", "b:1"} {
		if got := addr(""); got != want {
			t.Fatalf("manager %s, want %s: in turn", got, want)
		}
	}
	pool.Silent("b:1")
	// Its connection may look ready for minutes: it is dropped, to be
	// dialled afresh when b:1 is tried again.
	pool.mu.Lock()
	dropped := pool.conns["b:1"] == nil
	pool.mu.Unlock()
	if !dropped {
		t.Errorf("the silent manager's connection was kept")
	}
	for i, want := range []string{"c:1", "a:1", "c:1"} {
		if got := addr(""); got != want {
			t.Errorf("turn %d: %s, want %s (b:1 is silent)", i, got, want)
		}
	}
	if got := addr("b:1"); got == "b:1" {
		t.Errorf("a hint naming the silent b:1 was followed")
	}
	if got := addr("c:1"); got != "c:1" {
		t.Errorf("hint c:1 gave %s", got)
	}
	pool.Silent("a:1")
	pool.Silent("c:1")
	if got := addr(""); got == "" {
		t.Errorf("no manager when all are silent")
	}
}
