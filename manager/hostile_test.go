package manager

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/dispatcher"
	"github.com/shoal-project/shoal/manager/store"
)

// The bounds the hostile worker suite holds the leader to. A worker's
// reports are coalesced into one raft entry per 50 ms at most, so a flood
// of floodFor costs floodFor/50ms entries and some slack for the
// controllers' own writes; the leader's heap may grow by what the
// cluster's objects and the bounded queues take, never by what the worker
// sends.
const (
	floodFor       = 2 * time.Second
	floodRate      = 1000 // status calls a second
	maxFloodEntrys = uint64(floodFor/(50*time.Millisecond)) + 20
	maxHeapGrowth  = 16 << 20
	hostileStreams = 500
	// hostileSessions session opens in a row with the same description
	// write nothing new: at most the controllers' own entries.
	hostileSessions   = 200
	maxSessionEntries = 10
	// bigErr is a status err as large as gRPC's default 4 MiB message
	// limit lets through.
	bigErr = 4<<20 - 4<<10
)

// hostileCluster is a founded cluster whose one manager serves the cluster
// port with real mutual TLS and the store-checked authorizer, as shoald's.
type hostileCluster struct {
	m    *Manager
	addr string
	f    *ca.Founding
}

func startHostileCluster(t *testing.T) *hostileCluster {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ca.Found(selfID, lis.Addr().String(), &api.NodeDescription{Hostname: "manager-1", Os: "linux", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	m, err := Init(ctx, testConfig(t.TempDir()), f.Cluster, f.Node, Ingress{})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := f.Credentials.Keypair()
	if err != nil {
		t.Fatal(err)
	}
	roots, err := f.Credentials.Pool()
	if err != nil {
		t.Fatal(err)
	}
	auth := ca.Authorizer{Check: ca.Checker(m.State().Store())}
	opts := append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(identity.ServerConfig(kp, roots)))}, ServerOptions()...)
	srv := grpc.NewServer(append(opts, auth.ServerOptions()...)...)
	m.Register(srv)
	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_ = srv.Serve(lis)
	}()
	go func() {
		defer wg.Done()
		if err := m.Run(runCtx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() {
		stop()
		srv.Stop()
		wg.Wait()
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &hostileCluster{m: m, addr: lis.Addr().String(), f: f}
}

// join admits a worker through the CA as `shoald join` does and returns
// its node id and credentials.
func (c *hostileCluster) join(t *testing.T, desc *api.NodeDescription, advertise string) (string, identity.Credentials, error) {
	t.Helper()
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.JoinConfig(c.f.Cluster.GetRootCa().GetDigest()))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := api.NewCAClient(conn).IssueNodeCertificate(context.Background(), &api.IssueNodeCertificateRequest{
		Token: c.f.Cluster.GetJoinTokens().GetWorker(), CsrPem: csrPEM, Description: desc, AdvertiseAddr: advertise,
	})
	if err != nil {
		return "", identity.Credentials{}, err
	}
	creds := identity.Credentials{CACertPEM: c.f.Cluster.GetRootCa().GetCertPem(), CertPEM: resp.GetCertPem(), KeyPEM: keyPEM}
	return resp.GetNodeId(), creds, nil
}

// dial opens a new mutual-TLS connection as the holder of creds.
func (c *hostileCluster) dial(t *testing.T, creds identity.Credentials) api.DispatcherClient {
	t.Helper()
	kp, err := creds.Keypair()
	if err != nil {
		t.Fatal(err)
	}
	roots, err := creds.Pool()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(
		identity.ClientConfig(kp, roots, identity.ManagerServerName, identity.ALPNGRPC))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return api.NewDispatcherClient(conn)
}

func (c *hostileCluster) node(id string) *api.Node {
	var n *api.Node
	c.m.State().Store().View(func(tx store.ReadTx) { n = tx.Node(id) })
	return n
}

func (c *hostileCluster) task(id string) *api.Task {
	var tk *api.Task
	c.m.State().Store().View(func(tx store.ReadTx) { tk = tx.Task(id) })
	return tk
}

// openSession opens a session and returns its id, or the refusal.
func openHostileSession(ctx context.Context, client api.DispatcherClient, nodeID string, desc *api.NodeDescription) (string, error) {
	s, err := client.Session(ctx, &api.SessionRequest{NodeId: nodeID, Description: desc})
	if err != nil {
		return "", err
	}
	msg, err := s.Recv()
	if err != nil {
		return "", err
	}
	return msg.GetSessionId(), nil
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestHostileWorker is a worker with a valid certificate that attacks the
// leader through the dispatcher API, over real mutual TLS to a manager
// with real raft: huge errors, states that do not exist, a flood of status
// reports, hundreds of streams on one session and one that never reads, a
// data address that is not its own and another node's hostname. Each is
// refused or bounded, and the raft log and the leader's heap stay within
// the bounds above.
func TestHostileWorker(t *testing.T) {
	c := startHostileCluster(t)
	heapBefore := heapInUse()

	t.Run("joining with another node's hostname is refused", func(t *testing.T) {
		_, _, err := c.join(t, &api.NodeDescription{Hostname: "manager-1"}, "10.9.9.8:4242")
		if status.Code(err) != codes.AlreadyExists || !strings.Contains(status.Convert(err).Message(), "manager-1") {
			t.Fatalf("join as manager-1: %v, want AlreadyExists naming the hostname", err)
		}
	})

	nodeID, creds, err := c.join(t, &api.NodeDescription{Hostname: "evil"}, "10.9.9.9:4242")
	if err != nil {
		t.Fatal(err)
	}
	client := c.dial(t, creds)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	t.Run("spoofed data addresses are refused", func(t *testing.T) {
		for _, addr := range []string{"0.0.0.0", "224.0.0.1", "255.255.255.255", "8.8.8.8"} {
			_, err := openHostileSession(ctx, client, nodeID, &api.NodeDescription{Hostname: "evil", DataAddr: addr})
			if code := status.Code(err); code != codes.InvalidArgument && code != codes.PermissionDenied {
				t.Errorf("session with data address %s: %v, want it refused", addr, err)
			}
			if got := c.node(nodeID).GetDescription().GetDataAddr(); got != "" {
				t.Fatalf("stored data address %q after a refused session", got)
			}
		}
	})
	t.Run("claiming another node's hostname is refused", func(t *testing.T) {
		_, err := openHostileSession(ctx, client, nodeID, &api.NodeDescription{Hostname: "Manager-1"})
		if status.Code(err) != codes.AlreadyExists {
			t.Errorf("session as manager-1: %v, want AlreadyExists", err)
		}
		if got := c.node(nodeID).GetDescription().GetHostname(); got != "evil" {
			t.Errorf("stored hostname %q, want evil", got)
		}
	})

	// The worker's own session, with the data address it joined with, and
	// a task placed on it.
	sid, err := openHostileSession(ctx, client, nodeID, &api.NodeDescription{Hostname: "evil", DataAddr: "10.9.9.9"})
	if err != nil {
		t.Fatalf("the worker's own session: %v", err)
	}
	spec := spec("pinned", 1)
	spec.Task.Placement = &api.Placement{Constraints: []string{"node.hostname==evil"}}
	svc := createService(t, c.m, spec)
	var taskID string
	await.For(t, "the pinned task is assigned to the worker", func() bool {
		for _, tk := range tasksOf(c.m, svc.GetId()) {
			if tk.GetNodeId() == nodeID && tk.GetStatus().GetState() >= api.TaskState_TASK_STATE_ASSIGNED {
				taskID = tk.GetId()
				return true
			}
		}
		return false
	})
	report := func(st *api.TaskStatus) error {
		_, err := client.UpdateTaskStatus(ctx, &api.UpdateTaskStatusRequest{SessionId: sid, Updates: []*api.TaskStatusUpdate{{TaskId: taskID, Status: st}}})
		return err
	}
	// reportPaced is report by a worker that waits out the rate limit.
	reportPaced := func(st *api.TaskStatus) error {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			err := report(st)
			if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
				return err
			}
		}
	}
	if err := report(&api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING, Message: "started", Timestamp: timestamppb.Now()}); err != nil {
		t.Fatalf("a well-formed report: %v", err)
	}

	t.Run("hundreds of streams on one session leave one of each kind", func(t *testing.T) {
		var ended atomic.Int64
		var wg sync.WaitGroup
		sctx, scancel := context.WithCancel(ctx)
		defer func() {
			scancel()
			wg.Wait()
		}()
		for i := 0; i < hostileStreams; i++ {
			a, err := client.Assignments(sctx, &api.AssignmentsRequest{SessionId: sid})
			if err != nil {
				t.Fatal(err)
			}
			im, err := client.Images(sctx, &api.ImagesRequest{SessionId: sid})
			if err != nil {
				t.Fatal(err)
			}
			wg.Add(2)
			go func() {
				defer wg.Done()
				for {
					if _, err := a.Recv(); err != nil {
						if status.Code(err) == codes.Aborted {
							ended.Add(1)
						}
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				for {
					if _, err := im.Recv(); err != nil {
						if status.Code(err) == codes.Aborted {
							ended.Add(1)
						}
						return
					}
				}
			}()
		}
		want := int64(2 * (hostileStreams - 1))
		await.Within(t, 10*time.Second, 10*time.Millisecond, fmt.Sprintf("%d of %d streams to be ended as replaced", want, 2*hostileStreams), func() (bool, string) {
			return ended.Load() >= want, fmt.Sprintf("%d ended", ended.Load())
		})
	})

	// One more Assignments stream, on a connection of its own, that never
	// reads: everything below changes its task, and the leader must not
	// keep the changes for it.
	if _, err := c.dial(t, creds).Assignments(ctx, &api.AssignmentsRequest{SessionId: sid}); err != nil {
		t.Fatal(err)
	}

	t.Run("errors of 4 MiB are cut", func(t *testing.T) {
		for i := 0; i < 12; i++ {
			msg := strings.Repeat(string(rune('a'+i)), bigErr)
			err := report(&api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING, Message: "started", Err: msg, Timestamp: timestamppb.Now()})
			if err != nil && status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("report with a 4 MiB err: %v", err)
			}
		}
		got := c.task(taskID).GetStatus().GetErr()
		if len(got) > dispatcher.MaxStatusErr || !strings.Contains(got, "cut by the manager") {
			t.Errorf("stored err is %d bytes (%.40q…), want at most %d with the cut marked", len(got), got, dispatcher.MaxStatusErr)
		}
	})

	t.Run("a flood of reports costs few raft entries", func(t *testing.T) {
		before := c.m.State().Store().Index()
		var sent, refused atomic.Int64
		const workers = 20
		var wg sync.WaitGroup
		deadline := time.Now().Add(floodFor)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := time.NewTicker(time.Second * workers / floodRate)
				defer tick.Stop()
				for now := range tick.C {
					if now.After(deadline) {
						return
					}
					n := sent.Add(1)
					err := report(&api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING, Message: fmt.Sprintf("tick %d", n)})
					if status.Code(err) == codes.ResourceExhausted {
						refused.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		grew := c.m.State().Store().Index() - before
		t.Logf("%d reports in %v, %d refused as too fast; raft log grew by %d entries", sent.Load(), floodFor, refused.Load(), grew)
		if grew > maxFloodEntrys {
			t.Errorf("raft log grew by %d entries for %d reports, want at most %d", grew, sent.Load(), maxFloodEntrys)
		}
		if refused.Load() == 0 {
			t.Errorf("none of %d reports in %v was refused: no rate limit", sent.Load(), floodFor)
		}
	})

	t.Run("states that do not exist or are the managers' are refused", func(t *testing.T) {
		for _, st := range []api.TaskState{9999, -1, api.TaskState_TASK_STATE_ORPHANED, api.TaskState_TASK_STATE_REMOVE, api.TaskState_TASK_STATE_PENDING} {
			if err := reportPaced(&api.TaskStatus{State: st}); status.Code(err) != codes.InvalidArgument {
				t.Errorf("report of state %d: %v, want InvalidArgument", st, err)
			}
		}
		if got := c.task(taskID).GetStatus().GetState(); got != api.TaskState_TASK_STATE_RUNNING {
			t.Errorf("task is %v after bogus reports, want RUNNING", got)
		}
	})

	t.Run("reopening sessions costs few raft entries", func(t *testing.T) {
		before := c.m.State().Store().Index()
		refused := 0
		for i := 0; i < hostileSessions; i++ {
			_, err := openHostileSession(ctx, client, nodeID, &api.NodeDescription{Hostname: "evil", DataAddr: "10.9.9.9"})
			if status.Code(err) == codes.ResourceExhausted {
				refused++
			}
		}
		grew := c.m.State().Store().Index() - before
		t.Logf("%d session opens, %d refused as too fast; raft log grew by %d entries", hostileSessions, refused, grew)
		if grew > maxSessionEntries {
			t.Errorf("raft log grew by %d entries for %d session opens, want at most %d", grew, hostileSessions, maxSessionEntries)
		}
		if refused == 0 {
			t.Errorf("none of %d session opens was refused: no rate limit", hostileSessions)
		}
	})

	if grew := int64(heapInUse()) - int64(heapBefore); grew > maxHeapGrowth {
		t.Errorf("leader heap grew by %d MiB with a stream that never reads, want at most %d MiB", grew>>20, maxHeapGrowth>>20)
	} else {
		t.Logf("leader heap grew by %d KiB", grew>>10)
	}
}
