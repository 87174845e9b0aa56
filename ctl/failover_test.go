package ctl

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// manager is one manager of a cluster as the failover tests see it: a
// Control server on a unix socket that says which node it is, counts the
// calls it got, and can be made to fail in the ways real managers do.
type manager struct {
	controlServer
	id     string
	socket string
	srv    *grpc.Server

	mu    sync.Mutex
	calls []string
	// noLeader makes every call answer Unavailable, as a manager cut
	// off from the leader does.
	noLeader bool
	// drop makes the manager end every connection under a call, as
	// one that dies while doing it would.
	drop bool
}

func (m *manager) called(ctx context.Context, method string) error {
	m.mu.Lock()
	m.calls = append(m.calls, method)
	noLeader, drop := m.noLeader, m.drop
	m.mu.Unlock()
	if drop {
		go m.srv.Stop()
		<-ctx.Done()
		return ctx.Err()
	}
	if noLeader {
		return status.Error(codes.Unavailable, "no raft leader elected: try again shortly")
	}
	return nil
}

func (m *manager) callsOf(method string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, c := range m.calls {
		if c == method {
			n++
		}
	}
	return n
}

func (m *manager) ListNodes(ctx context.Context, req *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	if err := m.called(ctx, "ListNodes"); err != nil {
		return nil, err
	}
	if err := grpc.SetHeader(ctx, metadata.Pairs(NodeIDHeader, m.id)); err != nil {
		return nil, err
	}
	return &api.ListNodesResponse{Nodes: m.fixture.nodes}, nil
}

func (m *manager) CreateService(ctx context.Context, req *api.CreateServiceRequest) (*api.CreateServiceResponse, error) {
	if err := m.called(ctx, "CreateService"); err != nil {
		return nil, err
	}
	return m.controlServer.CreateService(ctx, req)
}

// startManagers serves a manager on a socket for each id (nodeAlpha...),
// stopped when the test ends.
func startManagers(t *testing.T, ids ...string) []*manager {
	t.Helper()
	var out []*manager
	for _, id := range ids {
		m := &manager{controlServer: controlServer{fixture: newFixture()}, id: id, socket: filepath.Join(t.TempDir(), "shoald.sock")}
		l, err := net.Listen("unix", m.socket)
		if err != nil {
			t.Fatal(err)
		}
		m.srv = grpc.NewServer()
		api.RegisterControlServer(m.srv, m)
		go m.srv.Serve(l)
		t.Cleanup(m.srv.Stop)
		out = append(out, m)
	}
	return out
}

// staleSocket is a socket file nobody listens on, as a killed shoald
// leaves behind.
func staleSocket(t *testing.T) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "shoald.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	return socket
}

// runLab runs shoalctl as plain shoalctl while a lab with the given
// manager sockets is up, with the production dialer and its memory in
// memory.
func runLab(t *testing.T, memory string, sockets []string, args ...string) (string, error) {
	t.Helper()
	e := dialEnv(nil, memory)
	e.labSockets = func() []string { return sockets }
	return runWith(t, e, args...)
}

// answeredBy is the id of the node `node ls` marks as the one that
// answered.
func answeredBy(t *testing.T, out string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == "*" {
			for _, id := range []string{nodeAlpha, nodeBravo, nodeCharlie} {
				if strings.HasPrefix(id, f[0]) {
					return id
				}
			}
		}
	}
	t.Fatalf("node ls marks no node as the one answering:\n%s", out)
	return ""
}

func TestFailoverOrderAndMemory(t *testing.T) {
	ms := startManagers(t, nodeAlpha, nodeBravo, nodeCharlie)
	missing := filepath.Join(t.TempDir(), "gone.sock")
	stale := staleSocket(t)
	memory := filepath.Join(t.TempDir(), "cache", "shoal", "managers.json")
	sockets := []string{missing, stale, ms[0].socket, ms[1].socket, ms[2].socket}

	nodeLs := func() string {
		t.Helper()
		out, err := runLab(t, memory, sockets, "node", "ls")
		if err != nil {
			t.Fatalf("node ls: %s", ErrorMessage(err))
		}
		return answeredBy(t, out)
	}

	// The first two cannot be reached: the first live one answers.
	if got := nodeLs(); got != nodeAlpha {
		t.Fatalf("answered by %s, want alpha, the first live manager", got)
	}
	// It is remembered, so the dead ones are not tried again.
	if got := (managerMemory{path: memory}).order(targetsOf(sockets)); got[0].socket != ms[0].socket {
		t.Errorf("memory puts %s first, want alpha's socket", got[0])
	}
	if got := nodeLs(); got != nodeAlpha {
		t.Errorf("answered by %s, want alpha again", got)
	}

	// Alpha dies: bravo answers, and is remembered instead.
	ms[0].srv.Stop()
	if got := nodeLs(); got != nodeBravo {
		t.Fatalf("after alpha died, answered by %s, want bravo", got)
	}
	ms[2].mu.Lock()
	ms[2].calls = nil
	ms[2].mu.Unlock()
	if got := nodeLs(); got != nodeBravo {
		t.Errorf("answered by %s, want bravo, remembered", got)
	}
	if n := ms[2].callsOf("ListNodes"); n != 0 {
		t.Errorf("charlie was asked %d times while bravo answers", n)
	}

	// The order the user gives does not change what is remembered.
	slices.Reverse(sockets)
	if got := nodeLs(); got != nodeBravo {
		t.Errorf("with the sockets reversed, answered by %s, want bravo, remembered", got)
	}

	// A damaged memory is ignored: the order given holds.
	if err := os.WriteFile(memory, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := nodeLs(); got != nodeCharlie {
		t.Errorf("with a damaged memory and the sockets reversed, answered by %s, want charlie, the first live one", got)
	}
}

func targetsOf(sockets []string) targets {
	var ts targets
	for _, s := range sockets {
		ts = append(ts, target{socket: s})
	}
	return ts
}

func TestFailoverWhatMovesOn(t *testing.T) {
	memory := filepath.Join(t.TempDir(), "managers.json")
	create := []string{"service", "create", "--detach", "--name", "web", "nginx"}

	for _, tt := range []struct {
		name string
		fail func(*manager)
	}{
		{"a read moves on from a manager without a leader", func(m *manager) { m.noLeader = true }},
		{"a read whose connection broke moves on", func(m *manager) { m.drop = true }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ms := startManagers(t, nodeAlpha, nodeBravo)
			tt.fail(ms[0])
			out, err := runLab(t, memory, []string{ms[0].socket, ms[1].socket}, "node", "ls")
			if err != nil {
				t.Fatal(ErrorMessage(err))
			}
			if got := answeredBy(t, out); got != nodeBravo || ms[0].callsOf("ListNodes") != 1 {
				t.Errorf("answered by %s after alpha got %d calls; want bravo after one", got, ms[0].callsOf("ListNodes"))
			}
		})
	}
	t.Run("a write does not: the manager answered", func(t *testing.T) {
		ms := startManagers(t, nodeAlpha, nodeBravo)
		ms[0].noLeader = true
		_, err := runLab(t, memory, []string{ms[0].socket, ms[1].socket}, create...)
		if got := ErrorMessage(err); got != "no raft leader elected: try again shortly" {
			t.Errorf("error = %q, want alpha's own answer", got)
		}
		if n := ms[1].callsOf("CreateService"); n != 0 {
			t.Errorf("bravo got the write too (%d times)", n)
		}
	})
	t.Run("a write moves on from a manager it cannot reach", func(t *testing.T) {
		ms := startManagers(t, nodeAlpha)
		if _, err := runLab(t, memory, []string{staleSocket(t), ms[0].socket}, create...); err != nil {
			t.Fatal(ErrorMessage(err))
		}
		if n := ms[0].callsOf("CreateService"); n != 1 {
			t.Errorf("alpha got the write %d times, want 1", n)
		}
	})
	t.Run("a write whose connection broke is not sent again", func(t *testing.T) {
		ms := startManagers(t, nodeAlpha, nodeBravo)
		ms[0].drop = true
		_, err := runLab(t, memory, []string{ms[0].socket, ms[1].socket}, create...)
		got := ErrorMessage(err)
		if !strings.HasPrefix(got, "cannot reach shoald at "+ms[0].socket+": ") || !strings.HasSuffix(got, "so it may have been done: look before you repeat it)") {
			t.Errorf("error = %q, want alpha's broken connection and what to do", got)
		}
		if n := ms[1].callsOf("CreateService"); n != 0 {
			t.Errorf("bravo got the write too (%d times): it may have been done twice", n)
		}
	})
	t.Run("a stream moves on when it cannot be opened", func(t *testing.T) {
		ms := startManagers(t, nodeAlpha)
		client, closer, err := dialTargets(t.Context(), targetsOf([]string{staleSocket(t), ms[0].socket}), managerMemory{})
		if err != nil {
			t.Fatal(err)
		}
		defer closer.Close()
		stream, err := client.WatchTasks(t.Context(), &api.WatchTasksRequest{})
		if err != nil {
			t.Fatal(ErrorMessage(err))
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(ErrorMessage(err))
		}
	})
	t.Run("nobody answers: every manager's reason", func(t *testing.T) {
		ms := startManagers(t, nodeAlpha)
		ms[0].noLeader = true
		stale, missing := staleSocket(t), filepath.Join(t.TempDir(), "gone.sock")
		_, err := runLab(t, memory, []string{stale, missing, ms[0].socket}, "node", "ls")
		want := strings.Join([]string{
			"none of the 3 managers could answer:",
			"cannot reach shoald at " + stale + ": is it running? (start it with `shoald init` or `shoald run`)",
			"cannot reach shoald at " + missing + ": is it running? (start it with `shoald init` or `shoald run`)",
			ms[0].socket + ": no raft leader elected: try again shortly",
		}, "\n")
		if got := ErrorMessage(err); got != want {
			t.Errorf("error:\n%s\nwant:\n%s", got, want)
		}
	})
	t.Run("no socket there at all: told before any call", func(t *testing.T) {
		a, b := filepath.Join(t.TempDir(), "a.sock"), filepath.Join(t.TempDir(), "b.sock")
		_, err := runLab(t, memory, []string{a, b}, "node", "ls")
		want := "none of the 2 managers could answer:\n" +
			"cannot reach shoald at " + a + ": is it running? (start it with `shoald init` or `shoald run`)\n" +
			"cannot reach shoald at " + b + ": is it running? (start it with `shoald init` or `shoald run`)"
		if got := ErrorMessage(err); got != want {
			t.Errorf("error:\n%s\nwant:\n%s", got, want)
		}
	})
}

// TestFailoverTLS: --host with several managers, the first of which is
// down, over mutual TLS; and a TLS refusal is explained per manager.
func TestFailoverTLS(t *testing.T) {
	ca := newTestCA(t, "shoal root CA")
	live := serveTLS(t, ca, tls.RequireAndVerifyClientCert)
	cert, key := ca.issue(t, "admin", nil, time.Now().Add(time.Hour))
	good := adminDir(t, ca.certPEM, cert, key)
	dead := deadAddr(t)
	other := newTestCA(t, "another cluster's CA")
	otherCert, otherKey := other.issue(t, "admin", nil, time.Now().Add(time.Hour))
	memory := filepath.Join(t.TempDir(), "managers.json")

	run := func(vars map[string]string, args ...string) (string, error) {
		return runWith(t, dialEnv(vars, memory), args...)
	}

	out, err := run(nil, "--host", dead+","+live, "--tls-dir", good, "node", "ls", "-q")
	if err != nil || !strings.HasPrefix(out, "nodealphaaaa\n") {
		t.Fatalf("--host DEAD,LIVE: %q, %s", out, ErrorMessage(err))
	}
	if got := (managerMemory{path: memory}).order(targets{{host: dead}, {host: live}}); got[0].host != live {
		t.Errorf("memory puts %s first, want the live manager", got[0])
	}
	out, err = run(map[string]string{hostEnv: dead + ", " + live, tlsDirEnv: good}, "node", "ls", "-q")
	if err != nil || !strings.HasPrefix(out, "nodealphaaaa\n") {
		t.Fatalf("SHOAL_HOST=DEAD,LIVE: %q, %s", out, ErrorMessage(err))
	}

	_, err = run(nil, "--host", dead+","+live, "--tls-dir", adminDir(t, ca.certPEM, otherCert, otherKey), "node", "ls")
	got := ErrorMessage(err)
	for _, want := range []string{
		"none of the 2 managers could answer:\n",
		"cannot reach shoald at " + dead + ": connection refused",
		"cannot reach shoald at " + live + ": the manager refused the admin certificate in ",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("error = %q\nwant it to contain %q", got, want)
		}
	}
}

func TestManagerMemory(t *testing.T) {
	dir := t.TempDir()
	m := managerMemory{path: filepath.Join(dir, "shoal", "managers.json")}
	abc := targets{{host: "a:1"}, {host: "b:1"}, {host: "c:1"}}
	order := func(ts targets) string { return ts.String() }

	if got := order(m.order(abc)); got != "a:1, b:1, c:1" {
		t.Errorf("without memory: %s", got)
	}
	m.remember(abc, abc[2])
	if got := order(m.order(abc)); got != "c:1, a:1, b:1" {
		t.Errorf("after c answered: %s, want c first and the rest in the order given", got)
	}
	if got := order(m.order(targets{abc[1], abc[2], abc[0]})); got != "c:1, b:1, a:1" {
		t.Errorf("same set in another order: %s", got)
	}
	// Another set of managers has its own memory.
	xy := targets{{host: "x:1"}, {host: "y:1"}}
	m.remember(xy, xy[1])
	if got := order(m.order(abc)); got != "c:1, a:1, b:1" {
		t.Errorf("another set changed this one's: %s", got)
	}
	if got := order(m.order(abc[:2])); got != "a:1, b:1" {
		t.Errorf("a subset is another set: %s", got)
	}
	// One target has nothing to order.
	m.remember(abc[:1], abc[0])
	if len(m.read().Sets) != 2 {
		t.Errorf("remembered %d sets, want 2: %+v", len(m.read().Sets), m.read())
	}
	// The file stays small.
	for i := range 3 * memorySets {
		set := targets{{host: "p:1"}, {host: "q:" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)}}
		m.remember(set, set[1])
	}
	if n := len(m.read().Sets); n != memorySets {
		t.Errorf("remembers %d sets, want at most %d", n, memorySets)
	}
	// Without a cache dir, nothing is remembered and nothing breaks.
	none := managerMemory{}
	none.remember(abc, abc[1])
	if got := order(none.order(abc)); got != "a:1, b:1, c:1" {
		t.Errorf("without a file: %s", got)
	}
	// An unwritable place is ignored.
	ro := managerMemory{path: filepath.Join(dir, "file", "managers.json")}
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ro.remember(abc, abc[1])
	if got := order(ro.order(abc)); got != "a:1, b:1, c:1" {
		t.Errorf("unwritable: %s", got)
	}
}
