package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/internal/testgrpc"
	"github.com/shoal-project/shoal/worker/exec"
)

// --- fake executor -------------------------------------------------------

// fakeExecutor records every verb called on it, per task, in order.
type fakeExecutor struct {
	mu         sync.Mutex
	calls      []string // "verb task"
	ctrls      map[string]*fakeController
	containers []exec.Container
	prepareErr map[string]error
	startErr   map[string]error
	// probeErr is what a task's health check answers (nil: it passes);
	// probes counts the checks run per task.
	probeErr map[string]error
	probes   map[string]int
	// listenErr is what Listening answers, per task (nil: listening).
	listenErr map[string]error
	// listHook, when set, runs inside Containers before it answers.
	listHook func(ctx context.Context)
}

func newFakeExecutor() *fakeExecutor {
	return &fakeExecutor{
		ctrls:      map[string]*fakeController{},
		prepareErr: map[string]error{},
		startErr:   map[string]error{},
		probeErr:   map[string]error{},
		probes:     map[string]int{},
		listenErr:  map[string]error{},
	}
}

// setProbe makes a task's health checks answer err from now on.
func (e *fakeExecutor) setProbe(id string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.probeErr[id] = err
}

// probeCount is how many health checks of a task ran.
func (e *fakeExecutor) probeCount(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.probes[id]
}

func (e *fakeExecutor) Describe(ctx context.Context) (*api.NodeDescription, error) {
	return &api.NodeDescription{Hostname: "fake", Os: "linux", Arch: "amd64", Engine: "fake 0"}, nil
}

func (e *fakeExecutor) Containers(ctx context.Context) ([]exec.Container, error) {
	e.mu.Lock()
	hook := e.listHook
	e.mu.Unlock()
	if hook != nil {
		hook(ctx)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.containers), nil
}

func (e *fakeExecutor) Controller(t *api.Task) (exec.Controller, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.ctrls[t.GetId()]
	if c == nil {
		c = &fakeController{e: e, id: t.GetId(), task: t, exit: make(chan error, 1)}
		e.ctrls[t.GetId()] = c
	}
	return c, nil
}

func (e *fakeExecutor) record(verb, id string) {
	e.mu.Lock()
	e.calls = append(e.calls, verb+" "+id)
	e.mu.Unlock()
}

// verbs returns the verbs called for one task, in order.
func (e *fakeExecutor) verbs(id string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, c := range e.calls {
		if verb, task, _ := strings.Cut(c, " "); task == id {
			out = append(out, verb)
		}
	}
	return out
}

// count returns how many times verb was called, for any task.
func (e *fakeExecutor) count(verb string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, c := range e.calls {
		if strings.HasPrefix(c, verb+" ") {
			n++
		}
	}
	return n
}

func (e *fakeExecutor) hasController(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ctrls[id] != nil
}

// exit ends the process of a task's container with err (nil is status 0).
func (e *fakeExecutor) exit(t *testing.T, id string, err error) {
	t.Helper()
	e.mu.Lock()
	c := e.ctrls[id]
	e.mu.Unlock()
	if c == nil {
		t.Fatalf("no controller for task %s", id)
	}
	c.exit <- err
}

// fakeController is one task's container: Wait blocks until the test ends
// the process or Shutdown kills it.
type fakeController struct {
	e    *fakeExecutor
	id   string
	task *api.Task
	exit chan error
}

// Prepare creates the container (so Containers lists it) unless the test
// made it fail.
func (c *fakeController) Prepare(ctx context.Context) error {
	c.e.record("prepare", c.id)
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	if err := c.e.prepareErr[c.id]; err != nil {
		return err
	}
	if !slices.ContainsFunc(c.e.containers, func(x exec.Container) bool { return x.TaskID == c.id }) {
		c.e.containers = append(c.e.containers, exec.Container{ID: "c-" + c.id, TaskID: c.id, ServiceID: c.task.GetServiceId(), Slot: c.task.GetSlot()})
	}
	return nil
}

func (c *fakeController) Start(ctx context.Context) error {
	c.e.record("start", c.id)
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	return c.e.startErr[c.id]
}

// Listening is a question, not a verb: it is not recorded.
func (c *fakeController) Listening(ctx context.Context, max time.Duration) error {
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	return c.e.listenErr[c.id]
}

func (c *fakeController) Wait(ctx context.Context) error {
	c.e.record("wait", c.id)
	select {
	case err := <-c.exit:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *fakeController) Shutdown(ctx context.Context) error {
	c.e.record("shutdown", c.id)
	// Killed by SIGTERM, as a real process would be.
	select {
	case c.exit <- &exec.ExitError{Code: 143}:
	default:
	}
	return nil
}

// Healthcheck is the spec's health check as it is: the fake has no
// images to merge it with.
func (c *fakeController) Healthcheck(ctx context.Context) (*api.HealthConfig, error) {
	hc := c.task.GetSpec().GetContainer().GetHealthcheck()
	if len(hc.GetTest()) == 0 || hc.GetTest()[0] == api.HealthTestNone {
		return nil, nil
	}
	return hc, nil
}

func (c *fakeController) Probe(ctx context.Context, hc *api.HealthConfig) error {
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	c.e.probes[c.id]++
	return c.e.probeErr[c.id]
}

func (c *fakeController) Remove(ctx context.Context) error {
	c.e.record("remove", c.id)
	c.e.mu.Lock()
	defer c.e.mu.Unlock()
	c.e.containers = slices.DeleteFunc(c.e.containers, func(x exec.Container) bool { return x.TaskID == c.id })
	return nil
}

// --- fake dispatcher -----------------------------------------------------

// report is one task status the agent sent, with the session it named.
type report struct {
	session string
	status  *api.TaskStatus
}

// assignStream is one open Assignments call; messages queued on out are
// sent in order.
type assignStream struct {
	session string
	out     chan *api.AssignmentsMessage
	seq     uint64
}

// fakeDispatcher implements api.DispatcherServer. Tests push assignment
// messages to the agent's current Assignments stream and read back the
// statuses it reports.
type fakeDispatcher struct {
	api.UnimplementedDispatcherServer

	mu       sync.Mutex
	sessions []string                 // session ids, in the order opened
	ends     map[string]chan struct{} // closed to end a session
	ended    map[string]bool          // sessions that ended
	streams  []*assignStream          // every Assignments call, in order
	reports  map[string][]report      // by task id, in arrival order
	// tasks is the fake's copy of what it assigned, for echoing.
	tasks map[string]*api.Task
	// echo sends every status report back as an INCREMENTAL update, the
	// way the real dispatcher's store subscription does.
	echo bool
	// updateHook, when set, may refuse an UpdateTaskStatus call.
	updateHook func(ctx context.Context, req *api.UpdateTaskStatusRequest) error
}

func newFakeDispatcher() *fakeDispatcher {
	return &fakeDispatcher{ends: map[string]chan struct{}{}, ended: map[string]bool{}, reports: map[string][]report{}, tasks: map[string]*api.Task{}}
}

func (d *fakeDispatcher) Session(req *api.SessionRequest, stream api.Dispatcher_SessionServer) error {
	d.mu.Lock()
	id := fmt.Sprintf("session-%d", len(d.sessions)+1)
	d.sessions = append(d.sessions, id)
	end := make(chan struct{})
	d.ends[id] = end
	d.mu.Unlock()
	if err := stream.Send(&api.SessionMessage{SessionId: id, HeartbeatPeriod: durationpb.New(100 * time.Millisecond)}); err != nil {
		return err
	}
	select {
	case <-stream.Context().Done():
		return nil
	case <-end:
		return status.Error(codes.Aborted, "session ended by the test")
	}
}

func (d *fakeDispatcher) Heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	return &api.HeartbeatResponse{Period: durationpb.New(100 * time.Millisecond)}, nil
}

func (d *fakeDispatcher) Assignments(req *api.AssignmentsRequest, stream api.Dispatcher_AssignmentsServer) error {
	s := &assignStream{session: req.GetSessionId(), out: make(chan *api.AssignmentsMessage, 256)}
	d.mu.Lock()
	d.streams = append(d.streams, s)
	d.mu.Unlock()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case msg := <-s.out:
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
}

func (d *fakeDispatcher) UpdateTaskStatus(ctx context.Context, req *api.UpdateTaskStatusRequest) (*api.UpdateTaskStatusResponse, error) {
	d.mu.Lock()
	hook := d.updateHook
	d.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, req); err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended[req.GetSessionId()] {
		return nil, status.Errorf(codes.NotFound, "session %q expired", req.GetSessionId())
	}
	var echoes []*api.AssignmentChange
	for _, u := range req.GetUpdates() {
		d.reports[u.GetTaskId()] = append(d.reports[u.GetTaskId()], report{session: req.GetSessionId(), status: u.GetStatus()})
		if t := d.tasks[u.GetTaskId()]; t != nil && d.echo {
			t = proto.Clone(t).(*api.Task)
			t.Status = u.GetStatus()
			t.Meta.Version++
			d.tasks[t.GetId()] = t
			echoes = append(echoes, &api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE, Task: t})
		}
	}
	if len(echoes) > 0 && len(d.streams) > 0 {
		d.sendLocked(d.streams[len(d.streams)-1], api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL, echoes)
	}
	return &api.UpdateTaskStatusResponse{}, nil
}

// sendLocked queues a message numbered in the stream's sequence.
func (d *fakeDispatcher) sendLocked(s *assignStream, typ api.AssignmentType, changes []*api.AssignmentChange) {
	d.sendNetLocked(s, typ, nil, changes)
}

// sendNetLocked queues a message with a network delta.
func (d *fakeDispatcher) sendNetLocked(s *assignStream, typ api.AssignmentType, network *api.NetworkDelta, changes []*api.AssignmentChange) {
	msg := &api.AssignmentsMessage{Type: typ, Changes: changes, Network: network}
	if typ == api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL {
		msg.AppliesTo = s.seq
	}
	s.seq++
	msg.ResultsIn = s.seq
	for _, c := range changes {
		if c.GetAction() == api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE {
			d.tasks[c.GetTask().GetId()] = c.GetTask()
		}
	}
	s.out <- msg
}

// stream waits for the n-th Assignments call (1-based).
func (d *fakeDispatcher) stream(t *testing.T, n int) *assignStream {
	t.Helper()
	var s *assignStream
	await.For(t, fmt.Sprintf("assignments call #%d", n), func() (bool, string) {
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.streams) >= n {
			s = d.streams[n-1]
			return true, ""
		}
		return false, fmt.Sprintf("%d calls so far", len(d.streams))
	})
	return s
}

// full sends a FULL set on the n-th Assignments stream.
func (d *fakeDispatcher) full(t *testing.T, n int, tasks ...*api.Task) {
	t.Helper()
	s := d.stream(t, n)
	changes := make([]*api.AssignmentChange, 0, len(tasks))
	for _, task := range tasks {
		changes = append(changes, &api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE, Task: task})
	}
	d.mu.Lock()
	d.sendLocked(s, api.AssignmentType_ASSIGNMENT_TYPE_FULL, changes)
	d.mu.Unlock()
}

// delta sends an INCREMENTAL message, in sequence, on the n-th stream.
func (d *fakeDispatcher) delta(t *testing.T, n int, changes ...*api.AssignmentChange) {
	t.Helper()
	s := d.stream(t, n)
	d.mu.Lock()
	d.sendLocked(s, api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL, changes)
	d.mu.Unlock()
}

// endSession closes a session's stream, as an expiry would.
func (d *fakeDispatcher) endSession(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if end := d.ends[id]; end != nil {
		close(end)
		delete(d.ends, id)
	}
	d.ended[id] = true
}

func (d *fakeDispatcher) sessionCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sessions)
}

// states returns the states reported for a task, in arrival order.
func (d *fakeDispatcher) states(id string) []api.TaskState {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []api.TaskState
	for _, r := range d.reports[id] {
		out = append(out, r.status.GetState())
	}
	return out
}

// last returns the latest report for a task, or a zero report.
func (d *fakeDispatcher) last(id string) report {
	d.mu.Lock()
	defer d.mu.Unlock()
	rs := d.reports[id]
	if len(rs) == 0 {
		return report{}
	}
	return rs[len(rs)-1]
}

// waitState waits until the latest report for a task is state st.
func (d *fakeDispatcher) waitState(t *testing.T, id string, st api.TaskState) *api.TaskStatus {
	t.Helper()
	await.For(t, fmt.Sprintf("task %s %s", id, api.StateName(st)), func() (bool, string) {
		r := d.last(id)
		return r.status.GetState() == st, fmt.Sprintf("reports so far: %v", d.states(id))
	})
	return d.last(id).status
}

// --- harness -------------------------------------------------------------

type harness struct {
	exe   *fakeExecutor
	disp  *fakeDispatcher
	agent *Agent
	stop  func()        // cancels Run and waits for it
	done  chan struct{} // closed when Run returned
}

// startAgent serves disp over an in-memory connection and runs an agent
// with exe against it. Everything stops at the end of the test.
func startAgent(t *testing.T, exe *fakeExecutor, disp *fakeDispatcher, opts ...func(*Config)) *harness {
	t.Helper()
	return runAgent(t, &harness{exe: exe, disp: disp}, exe, disp, opts...)
}

// runAgent serves srv over an in-memory connection and runs an agent with
// executor e against it; h holds the fakes behind srv and e. Everything
// stops at the end of the test.
func runAgent(t *testing.T, h *harness, e exec.Executor, srv api.DispatcherServer, opts ...func(*Config)) *harness {
	t.Helper()
	conn := testgrpc.Serve(t, func(s *grpc.Server) { api.RegisterDispatcherServer(s, srv) })
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg := Config{NodeID: "node1", Executor: e, Conn: conn, Logger: logger}
	for _, o := range opts {
		o(&cfg)
	}
	h.agent, h.done = New(cfg), make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(h.done)
		_ = h.agent.Run(ctx)
	}()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-h.done:
			case <-time.After(await.Settle):
				t.Errorf("agent did not stop within %v", await.Settle)
			}
		})
	}
	t.Cleanup(h.stop)
	return h
}

// testWriter sends agent logs to the test log, shown with -v.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// task is an assigned task of node1.
func task(id string, state, desired api.TaskState) *api.Task {
	return &api.Task{
		Id: id, ServiceId: "svc", ServiceName: "web", Slot: 1, NodeId: "node1",
		Meta:         &api.Meta{Version: 1},
		Spec:         &api.TaskSpec{Container: &api.ContainerSpec{Image: "example/echo:1"}},
		Status:       &api.TaskStatus{State: state},
		DesiredState: desired,
	}
}

func update(t *api.Task) *api.AssignmentChange {
	return &api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE, Task: t}
}

// withDesired returns a newer copy of t with another desired state.
func withDesired(t *api.Task, desired api.TaskState) *api.Task {
	c := proto.Clone(t).(*api.Task)
	c.DesiredState = desired
	c.Meta.Version++
	return c
}

// checkForward fails the test if a task's reports ever moved backwards.
func checkForward(t *testing.T, d *fakeDispatcher, id string) {
	t.Helper()
	states := d.states(id)
	for i := 1; i < len(states); i++ {
		if states[i] < states[i-1] {
			t.Errorf("task %s was reported backwards: %v", id, states)
			return
		}
	}
}
