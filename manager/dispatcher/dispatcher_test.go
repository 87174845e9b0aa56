package dispatcher

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/internal/testgrpc"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newRaft starts a single-member raft cluster in a temp dir and waits
// until it leads.
func newRaft(t *testing.T) *state.Node {
	t.Helper()
	_, tr := raft.NewInmemTransport(raft.ServerAddress("m1"))
	n, err := state.Open(state.Config{Dir: t.TempDir(), ID: "m1", Transport: tr, Logger: quietLogger()}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

func propose(t *testing.T, r *state.Node, actions ...*api.StoreAction) {
	t.Helper()
	if err := r.Propose(context.Background(), actions...); err != nil {
		t.Fatal(err)
	}
}

func node(id string) *api.Node {
	return &api.Node{Id: id, Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN}, Role: api.NodeRole_NODE_ROLE_WORKER}
}

// joined is n as a node that joined with advertise address addr.
func joined(n *api.Node, addr string) *api.Node {
	n.AdvertiseAddr = addr
	return n
}

func task(id, nodeID string, st api.TaskState) *api.Task {
	return &api.Task{Id: id, ServiceId: "svc", ServiceName: "web", Slot: 1, NodeId: nodeID,
		Status: &api.TaskStatus{State: st}, DesiredState: api.TaskState_TASK_STATE_RUNNING}
}

// mutate changes a stored task through raft.
func mutate(t *testing.T, r *state.Node, id string, fn func(*api.Task)) {
	t.Helper()
	var cur *api.Task
	r.Store().View(func(tx store.ReadTx) { cur = tx.Task(id) })
	if cur == nil {
		t.Fatalf("task %s not in the store", id)
	}
	upd := proto.Clone(cur).(*api.Task)
	fn(upd)
	propose(t, r, store.Update(upd))
}

func storedTask(r *state.Node, id string) *api.Task {
	var t *api.Task
	r.Store().View(func(tx store.ReadTx) { t = tx.Task(id) })
	return t
}

func storedNode(r *state.Node, id string) *api.Node {
	var n *api.Node
	r.Store().View(func(tx store.ReadTx) { n = tx.Node(id) })
	return n
}

// serve runs d over an in-memory gRPC connection.
func serve(t *testing.T, d *Dispatcher) api.DispatcherClient {
	t.Helper()
	conn := testgrpc.Serve(t, func(srv *grpc.Server) { api.RegisterDispatcherServer(srv, d) })
	return api.NewDispatcherClient(conn)
}

// runDispatcher runs d.Run until the test ends.
func runDispatcher(t *testing.T, d *Dispatcher) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

// openSession opens a session for nodeID and returns its id and stream.
func openSession(t *testing.T, c api.DispatcherClient, nodeID string, desc *api.NodeDescription) (string, api.Dispatcher_SessionClient) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.Session(ctx, &api.SessionRequest{NodeId: nodeID, Description: desc})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.Recv()
	if err != nil {
		t.Fatalf("session for %s: %v", nodeID, err)
	}
	if msg.GetSessionId() == "" {
		t.Fatal("session message without a session id")
	}
	return msg.GetSessionId(), s
}

func TestSessionRefused(t *testing.T) {
	r := newRaft(t)
	propose(t, r, store.Create(node("n1")))
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	tests := []struct {
		name   string
		nodeID string
		want   codes.Code
	}{
		{"no node id", "", codes.InvalidArgument},
		{"node not in the cluster", "ghost", codes.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := c.Session(context.Background(), &api.SessionRequest{NodeId: tc.nodeID})
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) != tc.want {
				t.Fatalf("err = %v, want code %v", err, tc.want)
			}
			if n := storedNode(r, "n1"); n.GetStatus().GetState() != api.NodeState_NODE_STATE_UNKNOWN {
				t.Errorf("a refused session changed node n1: %v", n.GetStatus())
			}
		})
	}
}

func TestSessionMarksNodeReady(t *testing.T) {
	r := newRaft(t)
	propose(t, r, store.Create(node("n1")))
	const period = 400 * time.Millisecond
	c := serve(t, New(r, Config{HeartbeatPeriod: period, Logger: quietLogger()}))
	desc := &api.NodeDescription{Hostname: "host-1", Os: "linux", Arch: "amd64", NanoCpus: 2e9, MemoryBytes: 1 << 30, Engine: "containerd 1.6.20"}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.Session(ctx, &api.SessionRequest{NodeId: "n1", Description: desc})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if p := msg.GetHeartbeatPeriod().AsDuration(); p < period*9/10 || p > period*11/10 {
		t.Errorf("heartbeat period = %v, want %v ±10%%", p, period)
	}
	n := storedNode(r, "n1")
	if n.GetStatus().GetState() != api.NodeState_NODE_STATE_READY {
		t.Errorf("node state = %v, want READY", n.GetStatus().GetState())
	}
	if !proto.Equal(n.GetDescription(), desc) {
		t.Errorf("node description = %v, want %v", n.GetDescription(), desc)
	}
	if n.GetStatus().GetAddr() == "" {
		t.Error("node status has no address")
	}
	if _, err := c.Heartbeat(context.Background(), &api.HeartbeatRequest{SessionId: msg.GetSessionId()}); err != nil {
		t.Errorf("heartbeat on the new session: %v", err)
	}

	// A second session for the node replaces the first.
	second, _ := openSession(t, c, "n1", desc)
	if second == msg.GetSessionId() {
		t.Fatal("second session reused the first one's id")
	}
	if _, err := s.Recv(); status.Code(err) != codes.Aborted {
		t.Errorf("replaced session stream ended with %v, want Aborted", err)
	}
	if _, err := c.Heartbeat(context.Background(), &api.HeartbeatRequest{SessionId: msg.GetSessionId()}); status.Code(err) != codes.NotFound {
		t.Errorf("heartbeat on the replaced session: %v, want NotFound", err)
	}
}

func TestUnknownSession(t *testing.T) {
	r := newRaft(t)
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
	}{
		{"heartbeat", func() error {
			_, err := c.Heartbeat(ctx, &api.HeartbeatRequest{SessionId: "nope"})
			return err
		}},
		{"update task status", func() error {
			_, err := c.UpdateTaskStatus(ctx, &api.UpdateTaskStatusRequest{SessionId: "nope"})
			return err
		}},
		{"assignments", func() error {
			s, err := c.Assignments(ctx, &api.AssignmentsRequest{SessionId: "nope"})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != codes.NotFound {
				t.Fatalf("err = %v, want NotFound", err)
			}
			if !strings.Contains(status.Convert(err).Message(), "open a new session") {
				t.Errorf("message %q does not tell the worker what to do", status.Convert(err).Message())
			}
		})
	}
}

// TestNodeDownWithoutHeartbeats runs two nodes, one of which heartbeats.
// Once the silent one is marked down, the other must still be ready: its
// heartbeats kept it so over the same span of time.
func TestNodeDownWithoutHeartbeats(t *testing.T) {
	r := newRaft(t)
	propose(t, r, store.Create(node("beating")), store.Create(node("silent")))
	// A grace of 20 periods: a loaded machine may delay a heartbeat a
	// lot before the beating node could be mistaken for a silent one.
	const period = 50 * time.Millisecond
	d := New(r, Config{HeartbeatPeriod: period, GraceMultiplier: 20, Logger: quietLogger()})
	c := serve(t, d)
	runDispatcher(t, d)

	beating, _ := openSession(t, c, "beating", nil)
	silent, silentStream := openSession(t, c, "silent", nil)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	beatErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(period):
			}
			if _, err := c.Heartbeat(ctx, &api.HeartbeatRequest{SessionId: beating}); err != nil && ctx.Err() == nil {
				beatErr <- err
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})

	await.For(t, "silent node DOWN", func() (bool, string) {
		n := storedNode(r, "silent")
		return n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN, n.GetStatus().String()
	})
	if msg := storedNode(r, "silent").GetStatus().GetMessage(); !strings.Contains(msg, "heartbeat missed") {
		t.Errorf("down node's status message = %q, want it to say why", msg)
	}
	if st := storedNode(r, "beating").GetStatus().GetState(); st != api.NodeState_NODE_STATE_READY {
		t.Errorf("heartbeating node is %v, want READY", st)
	}
	select {
	case err := <-beatErr:
		t.Errorf("heartbeat refused: %v", err)
	default:
	}
	if _, err := silentStream.Recv(); status.Code(err) != codes.Aborted {
		t.Errorf("expired session stream ended with %v, want Aborted", err)
	}
	if _, err := c.Heartbeat(context.Background(), &api.HeartbeatRequest{SessionId: silent}); status.Code(err) != codes.NotFound {
		t.Errorf("heartbeat on an expired session: %v, want NotFound", err)
	}
}

// change is an expected assignment change: action and task id.
type change struct {
	action api.AssignmentAction
	id     string
}

func (c change) String() string {
	return strings.TrimPrefix(c.action.String(), "ASSIGNMENT_ACTION_") + " " + c.id
}

func changesOf(msg *api.AssignmentsMessage) []change {
	var out []change
	for _, c := range msg.GetChanges() {
		out = append(out, change{c.GetAction(), c.GetTask().GetId()})
	}
	slices.SortFunc(out, func(a, b change) int { return strings.Compare(a.String(), b.String()) })
	return out
}

var (
	upd = api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE
	rem = api.AssignmentAction_ASSIGNMENT_ACTION_REMOVE
)

func TestAssignments(t *testing.T) {
	const (
		assigned = api.TaskState_TASK_STATE_ASSIGNED
		pending  = api.TaskState_TASK_STATE_PENDING
		running  = api.TaskState_TASK_STATE_RUNNING
	)
	r := newRaft(t)
	propose(t, r,
		store.Create(node("n1")), store.Create(node("n2")),
		store.Create(task("a", "n1", assigned)),
		store.Create(task("b", "n1", running)),
		store.Create(task("p", "", pending)),
		store.Create(task("early", "n1", pending)), // has a node but is not yet assigned
		store.Create(task("c", "n2", assigned)),
	)
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	sid, _ := openSession(t, c, "n1", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.Assignments(ctx, &api.AssignmentsRequest{SessionId: sid})
	if err != nil {
		t.Fatal(err)
	}
	full, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if full.GetType() != api.AssignmentType_ASSIGNMENT_TYPE_FULL || full.GetResultsIn() == 0 {
		t.Fatalf("first message: type %v results_in %d, want FULL with a sequence", full.GetType(), full.GetResultsIn())
	}
	if got, want := changesOf(full), []change{{upd, "a"}, {upd, "b"}}; !slices.Equal(got, want) {
		t.Fatalf("full set = %v, want %v", got, want)
	}
	seq := full.GetResultsIn()

	steps := []struct {
		name   string
		do     func(t *testing.T)
		want   []change
		except string // a task id that must not appear
		check  func(t *testing.T, msgTasks map[string]*api.Task)
	}{
		{
			name: "task placed on the node",
			do: func(t *testing.T) {
				mutate(t, r, "p", func(tk *api.Task) { tk.NodeId = "n1"; tk.Status.State = assigned })
			},
			want: []change{{upd, "p"}},
		},
		{
			name: "desired state changes",
			do: func(t *testing.T) {
				mutate(t, r, "a", func(tk *api.Task) { tk.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
			},
			want: []change{{upd, "a"}},
			check: func(t *testing.T, got map[string]*api.Task) {
				if got["a"].GetDesiredState() != api.TaskState_TASK_STATE_SHUTDOWN {
					t.Errorf("sent task a with desired %v, want SHUTDOWN", got["a"].GetDesiredState())
				}
			},
		},
		{
			name: "another node's task is not sent",
			do: func(t *testing.T) {
				mutate(t, r, "c", func(tk *api.Task) { tk.Status.State = running })
				mutate(t, r, "b", func(tk *api.Task) { tk.Status.State = api.TaskState_TASK_STATE_COMPLETE })
			},
			want: []change{{upd, "b"}}, except: "c",
		},
		{
			name: "task deleted",
			do:   func(t *testing.T) { propose(t, r, store.Remove(storedTask(r, "a"))) },
			want: []change{{rem, "a"}},
		},
		{
			name: "task moved to another node",
			do:   func(t *testing.T) { mutate(t, r, "p", func(tk *api.Task) { tk.NodeId = "n2" }) },
			want: []change{{rem, "p"}},
		},
		{
			name: "not-yet-assigned task reaches ASSIGNED",
			do:   func(t *testing.T) { mutate(t, r, "early", func(tk *api.Task) { tk.Status.State = assigned }) },
			want: []change{{upd, "early"}},
		},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			step.do(t)
			var got []change
			tasks := map[string]*api.Task{}
			// The changes may come in one message or several; each must
			// follow the one before.
			for len(got) < len(step.want) {
				msg, err := stream.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if msg.GetType() != api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL {
					t.Fatalf("got %v, want INCREMENTAL", msg.GetType())
				}
				if msg.GetAppliesTo() != seq || msg.GetResultsIn() != seq+1 {
					t.Fatalf("delta applies_to %d results_in %d; the worker holds %d", msg.GetAppliesTo(), msg.GetResultsIn(), seq)
				}
				seq = msg.GetResultsIn()
				for _, c := range changesOf(msg) {
					if c.id == step.except {
						t.Errorf("task %s of another node was sent: %v", c.id, msg)
					}
					got = append(got, c)
				}
				for _, c := range msg.GetChanges() {
					tasks[c.GetTask().GetId()] = c.GetTask()
				}
			}
			if !slices.Equal(got, step.want) {
				t.Fatalf("changes = %v, want %v", got, step.want)
			}
			if step.check != nil {
				step.check(t, tasks)
			}
		})
	}

	// A new stream starts over with the current full set.
	again, err := c.Assignments(ctx, &api.AssignmentsRequest{SessionId: sid})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := again.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changesOf(msg), []change{{upd, "b"}, {upd, "early"}}; msg.GetType() != api.AssignmentType_ASSIGNMENT_TYPE_FULL || !slices.Equal(got, want) {
		t.Errorf("second stream's first message: %v %v, want FULL %v", msg.GetType(), got, want)
	}
}

// TestUpdateTaskStatus sends status batches in order; each step sees the
// store the steps before it left.
func TestUpdateTaskStatus(t *testing.T) {
	const (
		assigned = api.TaskState_TASK_STATE_ASSIGNED
		starting = api.TaskState_TASK_STATE_STARTING
		running  = api.TaskState_TASK_STATE_RUNNING
		failed   = api.TaskState_TASK_STATE_FAILED
	)
	r := newRaft(t)
	propose(t, r, store.Create(node("n1")), store.Create(node("n2")),
		store.Create(task("t1", "n1", assigned)),
		store.Create(task("t2", "n1", assigned)),
		store.Create(task("t9", "n2", assigned)))
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	sid, _ := openSession(t, c, "n1", nil)

	st := func(id string, s api.TaskState) *api.TaskStatusUpdate {
		return &api.TaskStatusUpdate{TaskId: id, Status: &api.TaskStatus{State: s, Message: api.StateName(s)}}
	}
	steps := []struct {
		name     string
		updates  []*api.TaskStatusUpdate
		wantCode codes.Code
		want     map[string]api.TaskState
	}{
		{"forward", []*api.TaskStatusUpdate{st("t1", running)}, codes.OK,
			map[string]api.TaskState{"t1": running, "t2": assigned}},
		{"backwards is ignored", []*api.TaskStatusUpdate{st("t1", api.TaskState_TASK_STATE_ACCEPTED)}, codes.OK,
			map[string]api.TaskState{"t1": running}},
		{"manager-only state refuses the whole batch", []*api.TaskStatusUpdate{st("t2", running), st("t1", api.TaskState_TASK_STATE_PENDING)}, codes.InvalidArgument,
			map[string]api.TaskState{"t2": assigned}},
		{"orphaned is the managers' to set", []*api.TaskStatusUpdate{st("t2", api.TaskState_TASK_STATE_ORPHANED)}, codes.InvalidArgument,
			map[string]api.TaskState{"t2": assigned}},
		{"a state that does not exist is refused", []*api.TaskStatusUpdate{st("t2", api.TaskState(9999))}, codes.InvalidArgument,
			map[string]api.TaskState{"t2": assigned}},
		{"a health that does not exist is refused", []*api.TaskStatusUpdate{{TaskId: "t2", Status: &api.TaskStatus{State: running, Health: api.TaskHealth(77)}}}, codes.InvalidArgument,
			map[string]api.TaskState{"t2": assigned}},
		{"another node's task refuses the whole batch", []*api.TaskStatusUpdate{st("t2", running), st("t9", running)}, codes.PermissionDenied,
			map[string]api.TaskState{"t2": assigned, "t9": assigned}},
		{"unknown task is skipped", []*api.TaskStatusUpdate{st("gone", running), st("t2", starting)}, codes.OK,
			map[string]api.TaskState{"t2": starting}},
		{"several reports of one task keep the furthest", []*api.TaskStatusUpdate{st("t2", running), st("t2", starting)}, codes.OK,
			map[string]api.TaskState{"t2": running}},
		{"failure with its exit code", []*api.TaskStatusUpdate{{TaskId: "t1", Status: &api.TaskStatus{
			State: failed, Err: "task: non-zero exit (3)", Container: &api.ContainerStatus{ExitCode: 3}}}}, codes.OK,
			map[string]api.TaskState{"t1": failed}},
		{"a final state is final", []*api.TaskStatusUpdate{st("t1", api.TaskState_TASK_STATE_REJECTED)}, codes.OK,
			map[string]api.TaskState{"t1": failed}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			_, err := c.UpdateTaskStatus(context.Background(), &api.UpdateTaskStatusRequest{SessionId: sid, Updates: step.updates})
			if status.Code(err) != step.wantCode {
				t.Fatalf("err = %v, want %v", err, step.wantCode)
			}
			for id, want := range step.want {
				if got := storedTask(r, id).GetStatus().GetState(); got != want {
					t.Errorf("task %s is %v, want %v", id, got, want)
				}
			}
		})
	}
	t1 := storedTask(r, "t1")
	if t1.GetStatus().GetContainer().GetExitCode() != 3 || !strings.Contains(t1.GetStatus().GetErr(), "(3)") {
		t.Errorf("failed task's status = %v, want exit code 3 and the error", t1.GetStatus())
	}
}

// TestClosedSessionKeepsNodeForGrace closes a node's session without the
// node missing a heartbeat (a worker restarting, a connection breaking).
// The node is not known to be dead: it must be marked DOWN only once a
// whole grace period passed without a new session, not at the next check.
func TestClosedSessionKeepsNodeForGrace(t *testing.T) {
	r := newRaft(t)
	marker := node("marker")
	marker.Status.State = api.NodeState_NODE_STATE_READY
	propose(t, r, store.Create(node("flaky")), store.Create(marker))
	const (
		period = 50 * time.Millisecond
		mult   = 20
		grace  = period * mult
	)
	d := New(r, Config{HeartbeatPeriod: period, GraceMultiplier: mult, Logger: quietLogger()})
	c := serve(t, d)
	runDispatcher(t, d)
	// marker never opens a session: once it is DOWN, the dispatcher has
	// run for longer than a grace period, so its start-up allowance no
	// longer covers flaky.
	await.For(t, "marker node DOWN", func() (bool, string) {
		n := storedNode(r, "marker")
		return n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN, n.GetStatus().String()
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.Session(ctx, &api.SessionRequest{NodeId: "flaky"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	if st := storedNode(r, "flaky").GetStatus().GetState(); st != api.NodeState_NODE_STATE_READY {
		t.Fatalf("flaky is %v after its session opened", st)
	}
	closedAt := time.Now()
	cancel()

	await.For(t, "flaky node DOWN", func() (bool, string) {
		n := storedNode(r, "flaky")
		return n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN, n.GetStatus().String()
	})
	n := storedNode(r, "flaky")
	if downAt := n.GetMeta().GetUpdatedAt().AsTime(); downAt.Sub(closedAt) < grace {
		t.Errorf("node marked DOWN %v after its session closed; want at least the grace period %v", downAt.Sub(closedAt), grace)
	}
}

// TestLeaveCluster: a worker removes itself, session and all; a manager
// is told to demote first, a node that is gone is told so, and nobody
// removes another node.
func TestLeaveCluster(t *testing.T) {
	r := newRaft(t)
	mgr := node("m2")
	mgr.Role = api.NodeRole_NODE_ROLE_MANAGER
	promoted := node("w2")
	promoted.Spec = &api.NodeSpec{DesiredRole: api.NodeRole_NODE_ROLE_MANAGER}
	propose(t, r, store.Create(node("w1")), store.Create(mgr), store.Create(promoted))
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	ctx := context.Background()

	sid, _ := openSession(t, c, "w1", &api.NodeDescription{Hostname: "worker1"})
	if _, err := c.LeaveCluster(ctx, &api.LeaveClusterRequest{NodeId: "w1"}); err != nil {
		t.Fatalf("worker leaves: %v", err)
	}
	if n := storedNode(r, "w1"); n != nil {
		t.Fatalf("w1 still stored after it left: %v", n)
	}
	if _, err := c.Heartbeat(ctx, &api.HeartbeatRequest{SessionId: sid}); status.Code(err) != codes.NotFound {
		t.Errorf("heartbeat on the session of a node that left: %v, want NotFound", err)
	}
	for _, tc := range []struct {
		name, node, want string
		code             codes.Code
	}{
		{"manager", "m2", "demote it first", codes.FailedPrecondition},
		{"worker being promoted", "w2", "demote it first", codes.FailedPrecondition},
		{"node that left", "w1", "not part of this cluster", codes.NotFound},
		{"no node", "", "node_id", codes.InvalidArgument},
	} {
		_, err := c.LeaveCluster(ctx, &api.LeaveClusterRequest{NodeId: tc.node})
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %v saying %q", tc.name, err, tc.code, tc.want)
		}
	}
	if storedNode(r, "m2") == nil || storedNode(r, "w2") == nil {
		t.Error("a refused leave removed its node")
	}
	// A node certificate acts only for its own node.
	other := identity.WithIdentity(ctx, identity.Identity{NodeID: "w2", Role: identity.RoleWorker})
	if _, err := New(r, Config{Logger: quietLogger()}).LeaveCluster(other, &api.LeaveClusterRequest{NodeId: "m2"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("w2 removing m2: %v, want PermissionDenied", err)
	}
}

// TestSessionFollowsManagers: a session names the managers' nodes, and
// names them again when they change, so a worker stops trusting a demoted
// manager as soon as the leader does; a follower's refusal names the
// leader's node beside its address.
func TestSessionFollowsManagers(t *testing.T) {
	r := newRaft(t)
	propose(t, r, store.Create(node("n1")))
	var mu sync.Mutex
	managers := []*api.ManagerNode{{NodeId: "m1", Addr: "10.0.0.1:4242"}, {NodeId: "m2", Addr: "10.0.0.2:4242"}}
	d := New(r, Config{Logger: quietLogger(), HeartbeatPeriod: time.Hour, Managers: func() []*api.ManagerNode {
		mu.Lock()
		defer mu.Unlock()
		return managers
	}})
	runDispatcher(t, d)
	c := serve(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.Session(ctx, &api.SessionRequest{NodeId: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetManagerNodes()) != 2 || first.GetManagerNodes()[1].GetNodeId() != "m2" || len(first.GetManagers()) != 2 {
		t.Fatalf("first session message names %v / %v", first.GetManagerNodes(), first.GetManagers())
	}
	mu.Lock()
	managers = managers[:1] // m2 demoted
	mu.Unlock()
	for {
		msg, err := s.Recv()
		if err != nil {
			t.Fatalf("no manager list after m2 was demoted: %v", err)
		}
		if len(msg.GetManagerNodes()) == 1 {
			if msg.GetSessionId() != first.GetSessionId() || msg.GetManagers()[0] != "10.0.0.1:4242" {
				t.Errorf("update %v", msg)
			}
			break
		}
	}

	follower := New(r, Config{Logger: quietLogger(),
		Leader:     func() (bool, string) { return false, "10.0.0.1:4242" },
		LeaderNode: func() string { return "m1" }})
	fs, err := serve(t, follower).Session(ctx, &api.SessionRequest{NodeId: "n1"})
	if err == nil {
		_, err = fs.Recv()
	}
	if tr := fs.Trailer(); status.Code(err) != codes.Unavailable || !slices.Equal(tr.Get(LeaderHeader), []string{"10.0.0.1:4242"}) || !slices.Equal(tr.Get(LeaderNodeHeader), []string{"m1"}) {
		t.Errorf("follower: %v, trailer %v", err, fs.Trailer())
	}
}

func TestTruncate(t *testing.T) {
	long := strings.Repeat("é", 5000) // 2 bytes a rune
	for _, limit := range []int{MaxStatusMessage, MaxStatusErr, 100} {
		got := truncate(long, limit)
		if len(got) > limit || !utf8.ValidString(got) || !strings.Contains(got, "bytes cut by the manager") || !strings.HasPrefix(got, "éé") {
			t.Errorf("truncate to %d: %d bytes, valid UTF-8 %v: %.80q…", limit, len(got), utf8.ValidString(got), got)
		}
	}
	if got := truncate("short", 100); got != "short" {
		t.Errorf("truncate kept %q, want it unchanged", got)
	}
}

// TestSessionDescriptionChecked opens sessions with descriptions the
// managers must not take: nothing of a refused one is stored.
func TestSessionDescriptionChecked(t *testing.T) {
	r := newRaft(t)
	other := node("n2")
	other.Description = &api.NodeDescription{Hostname: "db-host"}
	propose(t, r, store.Create(joined(node("n1"), "10.0.0.7:4242")), store.Create(other))
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	tests := []sessionDescriptionTest{
		{"unspecified data address", &api.NodeDescription{Hostname: "w", DataAddr: "0.0.0.0"}, codes.InvalidArgument, "unspecified"},
		{"multicast data address", &api.NodeDescription{Hostname: "w", DataAddr: "239.1.1.1"}, codes.InvalidArgument, "multicast"},
		{"broadcast data address", &api.NodeDescription{Hostname: "w", DataAddr: "255.255.255.255"}, codes.InvalidArgument, "broadcast"},
		{"another host's data address", &api.NodeDescription{Hostname: "w", DataAddr: "8.8.8.8"}, codes.PermissionDenied, "not this node's"},
		{"loopback data address from another host", &api.NodeDescription{Hostname: "w", DataAddr: "127.0.0.1"}, codes.PermissionDenied, "loopback"},
		{"another node's hostname", &api.NodeDescription{Hostname: "DB-host"}, codes.AlreadyExists, "taken by node n2"},
		{"hostname that is no DNS name", &api.NodeDescription{Hostname: "a b"}, codes.InvalidArgument, "hostname"},
		{"negative memory", &api.NodeDescription{Hostname: "w", MemoryBytes: -1}, codes.InvalidArgument, "memory_bytes"},
		{"engine with control characters", &api.NodeDescription{Hostname: "w", Engine: "x\x1b[2J"}, codes.InvalidArgument, "engine"},
		{"the address it joined with", &api.NodeDescription{Hostname: "w", DataAddr: "10.0.0.7"}, codes.OK, ""},
	}
	checkSessionDescriptions(t, r, c, tests)
}

// TestSessionWireGuardKeyChecked opens sessions with WireGuard keys: none
// or 32 bytes not all zero is taken, anything else refused, and nothing
// of a refused one is stored. (Apart from TestSessionDescriptionChecked:
// a node may open only so many sessions at once.)
func TestSessionWireGuardKeyChecked(t *testing.T) {
	r := newRaft(t)
	propose(t, r, store.Create(joined(node("n1"), "10.0.0.7:4242")))
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	checkSessionDescriptions(t, r, c, []sessionDescriptionTest{
		{"short WireGuard key", &api.NodeDescription{Hostname: "w", WireguardKey: make([]byte, 31)}, codes.InvalidArgument, "description.wireguard_key: 31 bytes: want a 32-byte public key"},
		{"long WireGuard key", &api.NodeDescription{Hostname: "w", WireguardKey: make([]byte, 33)}, codes.InvalidArgument, "description.wireguard_key: 33 bytes"},
		{"WireGuard key as base64 text", &api.NodeDescription{Hostname: "w", WireguardKey: []byte("cGVlcnB1YmxpY2tleWJhc2U2NGVuY29kZWQ9PT0=")}, codes.InvalidArgument, "description.wireguard_key: 40 bytes"},
		{"all-zero WireGuard key", &api.NodeDescription{Hostname: "w", WireguardKey: make([]byte, 32)}, codes.InvalidArgument, "description.wireguard_key: all zero"},
		{"a WireGuard key", &api.NodeDescription{Hostname: "w", DataAddr: "10.0.0.7", WireguardKey: wgKey(1)}, codes.OK, ""},
	})
}

// sessionDescriptionTest is a session opened with desc and what the
// dispatcher must answer.
type sessionDescriptionTest struct {
	name     string
	desc     *api.NodeDescription
	wantCode codes.Code
	wantMsg  string
}

// checkSessionDescriptions opens n1's session with each description in
// turn (the refused ones first: an accepted one is stored).
func checkSessionDescriptions(t *testing.T, r *state.Node, c api.DispatcherClient, tests []sessionDescriptionTest) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, err := c.Session(ctx, &api.SessionRequest{NodeId: "n1", Description: tt.desc})
			if err == nil {
				_, err = s.Recv()
			}
			if st := status.Convert(err); st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("%v %q, want %v %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			got := storedNode(r, "n1").GetDescription()
			if tt.wantCode != codes.OK && got != nil {
				t.Errorf("a refused session stored description %v", got)
			}
			if tt.wantCode == codes.OK && !proto.Equal(got, tt.desc) {
				t.Errorf("stored description %v, want %v", got, tt.desc)
			}
		})
	}
}
