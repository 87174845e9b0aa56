package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/worker/exec"
)

const (
	stAssigned = api.TaskState_TASK_STATE_ASSIGNED
	stStarting = api.TaskState_TASK_STATE_STARTING
	stRunning  = api.TaskState_TASK_STATE_RUNNING
	stComplete = api.TaskState_TASK_STATE_COMPLETE
	stShutdown = api.TaskState_TASK_STATE_SHUTDOWN
	stFailed   = api.TaskState_TASK_STATE_FAILED
	stRejected = api.TaskState_TASK_STATE_REJECTED
	stRemove   = api.TaskState_TASK_STATE_REMOVE
)

// TestAgentTaskLifecycle assigns one task and follows it from ACCEPTED to
// the state its process (or its preparation) ends it in.
func TestAgentTaskLifecycle(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(e *fakeExecutor)
		exit     error // how the process ends; only used if it runs
		wantRun  bool  // the task must reach RUNNING first
		want     api.TaskState
		wantCode int32
		wantErr  string
		verbs    []string
	}{
		{
			name: "exit 0 completes", wantRun: true, exit: nil,
			want: stComplete, verbs: []string{"prepare", "start", "wait"},
		},
		{
			name: "non-zero exit fails with the code", wantRun: true, exit: &exec.ExitError{Code: 3},
			want: stFailed, wantCode: 3, wantErr: "non-zero exit (3)", verbs: []string{"prepare", "start", "wait"},
		},
		{
			name: "wait error fails", wantRun: true, exit: errors.New("lost the shim"),
			want: stFailed, wantErr: "wait: lost the shim", verbs: []string{"prepare", "start", "wait"},
		},
		{
			name: "missing image rejects",
			setup: func(e *fakeExecutor) {
				e.prepareErr["t1"] = fmt.Errorf("pull example/echo:1: %w", exec.ErrImageUnavailable)
			},
			want: stRejected, wantErr: "image unavailable", verbs: []string{"prepare"},
		},
		{
			name:  "start error fails",
			setup: func(e *fakeExecutor) { e.startErr["t1"] = errors.New("runc: exec format error") },
			want:  stFailed, wantErr: "start: runc: exec format error", verbs: []string{"prepare", "start"},
		},
		{
			name:    "container prepared earlier is started",
			setup:   func(e *fakeExecutor) { e.prepareErr["t1"] = fmt.Errorf("create: %w", exec.ErrTaskPrepared) },
			wantRun: true, exit: nil, want: stComplete, verbs: []string{"prepare", "start", "wait"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exe := newFakeExecutor()
			if tc.setup != nil {
				tc.setup(exe)
			}
			h := startAgent(t, exe, newFakeDispatcher())
			h.disp.full(t, 1, task("t1", stAssigned, stRunning))
			if tc.wantRun {
				st := h.disp.waitState(t, "t1", stRunning)
				if st.GetStartedAt() == nil {
					t.Errorf("RUNNING report has no started_at: %v", st)
				}
				h.exe.exit(t, "t1", tc.exit)
			}
			st := h.disp.waitState(t, "t1", tc.want)
			if got := st.GetContainer().GetExitCode(); got != tc.wantCode {
				t.Errorf("exit_code = %d, want %d", got, tc.wantCode)
			}
			if !strings.Contains(st.GetErr(), tc.wantErr) || (tc.wantErr == "") != (st.GetErr() == "") {
				t.Errorf("err = %q, want it to contain %q", st.GetErr(), tc.wantErr)
			}
			if tc.wantRun && st.GetStartedAt() == nil {
				t.Errorf("final report lost started_at: %v", st)
			}
			checkForward(t, h.disp, "t1")
			if first := h.disp.states("t1")[0]; first < api.TaskState_TASK_STATE_ACCEPTED {
				t.Errorf("first report is %v; a worker reports from ACCEPTED on", first)
			}
			h.stop()
			if got := exe.verbs("t1"); !slices.Equal(got, tc.verbs) {
				t.Errorf("executor calls = %v, want %v", got, tc.verbs)
			}
		})
	}
}

// TestAgentRunningOnceListening: a task whose process ends before it
// listens (an image that crashes at once) is never reported RUNNING, so
// that it is nobody's backend and a start-first update keeps the task it
// would have replaced.
func TestAgentRunningOnceListening(t *testing.T) {
	exe := newFakeExecutor()
	exe.listenErr["t1"] = exec.ErrExited
	h := startAgent(t, exe, newFakeDispatcher())
	h.disp.full(t, 1, task("t1", stAssigned, stRunning))
	h.disp.waitState(t, "t1", api.TaskState_TASK_STATE_STARTING)
	await.For(t, "the agent waiting on the process", func() bool { return slices.Contains(exe.verbs("t1"), "wait") })
	h.exe.exit(t, "t1", &exec.ExitError{Code: 1})
	st := h.disp.waitState(t, "t1", stFailed)
	if slices.Contains(h.disp.states("t1"), stRunning) {
		t.Errorf("reported %v: a process that never listened was RUNNING", h.disp.states("t1"))
	}
	if st.GetStartedAt() != nil || !strings.Contains(st.GetErr(), "non-zero exit (1)") {
		t.Errorf("final report %v, want a failure without started_at", st)
	}
}

// TestAgentStopsTasks tells a running (or ended) task to go, in each way
// the dispatcher can, and checks its container is stopped and removed.
func TestAgentStopsTasks(t *testing.T) {
	t1 := task("t1", stAssigned, stRunning)
	tests := []struct {
		name      string
		exitFirst bool // the process ended on its own before the change
		change    *api.AssignmentChange
		want      api.TaskState
		verbs     []string
	}{
		{
			name: "desired shutdown", change: update(withDesired(t1, stShutdown)),
			want: stShutdown, verbs: []string{"prepare", "start", "wait", "shutdown", "remove"},
		},
		{
			name: "desired remove", change: update(withDesired(t1, stRemove)),
			want: stShutdown, verbs: []string{"prepare", "start", "wait", "shutdown", "remove"},
		},
		{
			name:   "dropped from assignments",
			change: &api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_REMOVE, Task: &api.Task{Id: "t1"}},
			want:   stShutdown, verbs: []string{"prepare", "start", "wait", "shutdown", "remove"},
		},
		{
			name: "ended task is only removed", exitFirst: true, change: update(withDesired(t1, stShutdown)),
			want: stComplete, verbs: []string{"prepare", "start", "wait", "remove"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exe := newFakeExecutor()
			h := startAgent(t, exe, newFakeDispatcher())
			h.disp.full(t, 1, t1)
			h.disp.waitState(t, "t1", stRunning)
			if tc.exitFirst {
				exe.exit(t, "t1", nil)
				h.disp.waitState(t, "t1", stComplete)
			}
			h.disp.delta(t, 1, tc.change)
			await.For(t, "container removed", func() (bool, string) {
				v := exe.verbs("t1")
				return slices.Contains(v, "remove"), fmt.Sprint(v)
			})
			h.disp.waitState(t, "t1", tc.want)
			h.stop()
			if got := exe.verbs("t1"); !slices.Equal(got, tc.verbs) {
				t.Errorf("executor calls = %v, want %v", got, tc.verbs)
			}
			checkForward(t, h.disp, "t1")
		})
	}
}

// TestAgentFullSetRemovesTheRest checks that a FULL set is the whole truth:
// containers of tasks outside it go, whether the agent ran them in this
// process or found them in the runtime.
func TestAgentFullSetRemovesTheRest(t *testing.T) {
	t.Run("container found in the runtime", func(t *testing.T) {
		exe := newFakeExecutor()
		exe.containers = []exec.Container{{ID: "c-gone", TaskID: "gone", ServiceID: "svc", Slot: 2, Running: true}}
		h := startAgent(t, exe, newFakeDispatcher())
		h.disp.full(t, 1, task("t1", stAssigned, stRunning))
		h.disp.waitState(t, "t1", stRunning)
		await.For(t, "orphan removed", func() (bool, string) {
			v := exe.verbs("gone")
			return slices.Equal(v, []string{"shutdown", "remove"}), fmt.Sprint(v)
		})
		h.stop()
		if v := exe.verbs("gone"); !slices.Equal(v, []string{"shutdown", "remove"}) {
			t.Errorf("orphan's calls = %v, want shutdown then remove and nothing else", v)
		}
		if v := exe.verbs("t1"); slices.Contains(v, "shutdown") || slices.Contains(v, "remove") {
			t.Errorf("assigned task's container was touched: %v", v)
		}
	})

	t.Run("task the agent ran, after a reconnect", func(t *testing.T) {
		exe := newFakeExecutor()
		h := startAgent(t, exe, newFakeDispatcher())
		h.disp.full(t, 1, task("t1", stAssigned, stRunning))
		h.disp.waitState(t, "t1", stRunning)
		h.disp.endSession("session-1")
		h.disp.full(t, 2, task("t2", stAssigned, stRunning))
		h.disp.waitState(t, "t1", stShutdown)
		h.disp.waitState(t, "t2", stRunning)
		h.stop()
		// The runner removes its own container; it must not be removed a
		// second time, concurrently, as an orphan.
		if v, want := exe.verbs("t1"), []string{"prepare", "start", "wait", "shutdown", "remove"}; !slices.Equal(v, want) {
			t.Errorf("t1 calls = %v, want %v", v, want)
		}
	})
}

// TestAgentAdoptsTasks restarts the agent's view of tasks that an earlier
// run of the agent had already started.
func TestAgentAdoptsTasks(t *testing.T) {
	tests := []struct {
		name     string
		state    api.TaskState // as the managers last heard it
		setup    func(e *fakeExecutor)
		exit     bool // end the process and expect COMPLETE
		want     api.TaskState
		wantErr  string
		verbs    []string
		minState api.TaskState // no report may be below this
	}{
		{
			name: "running container is waited on", state: stRunning,
			setup: func(e *fakeExecutor) {
				e.containers = []exec.Container{{ID: "c-t1", TaskID: "t1", Running: true}}
				e.prepareErr["t1"] = exec.ErrTaskPrepared
			},
			exit: true, want: stComplete, verbs: []string{"prepare", "wait"}, minState: stComplete,
		},
		{
			name: "started container is not started twice", state: stStarting,
			setup: func(e *fakeExecutor) {
				e.containers = []exec.Container{{ID: "c-t1", TaskID: "t1", Running: true}}
				e.prepareErr["t1"] = exec.ErrTaskPrepared
				e.startErr["t1"] = exec.ErrTaskStarted
			},
			exit: true, want: stComplete, verbs: []string{"prepare", "start", "wait"}, minState: stRunning,
		},
		{
			name: "vanished container fails", state: stRunning,
			want: stFailed, wantErr: "container disappeared", verbs: []string{"prepare", "remove"}, minState: stFailed,
		},
		{
			name: "adoption error fails", state: stRunning,
			setup: func(e *fakeExecutor) { e.prepareErr["t1"] = errors.New("containerd: unavailable") },
			want:  stFailed, wantErr: "adopt: containerd: unavailable", verbs: []string{"prepare"}, minState: stFailed,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exe := newFakeExecutor()
			if tc.setup != nil {
				tc.setup(exe)
			}
			h := startAgent(t, exe, newFakeDispatcher())
			h.disp.full(t, 1, task("t1", tc.state, stRunning))
			if tc.exit {
				await.For(t, "wait attached", func() (bool, string) {
					v := exe.verbs("t1")
					return slices.Contains(v, "wait"), fmt.Sprint(v)
				})
				exe.exit(t, "t1", nil)
			}
			st := h.disp.waitState(t, "t1", tc.want)
			if !strings.Contains(st.GetErr(), tc.wantErr) {
				t.Errorf("err = %q, want it to contain %q", st.GetErr(), tc.wantErr)
			}
			h.stop()
			if v := exe.verbs("t1"); !slices.Equal(v, tc.verbs) {
				t.Errorf("executor calls = %v, want %v", v, tc.verbs)
			}
			for _, s := range h.disp.states("t1") {
				if s < tc.minState {
					t.Errorf("adopted task reported %v; reports: %v", s, h.disp.states("t1"))
				}
			}
		})
	}
}

// TestAgentResyncsOnGap sends a delta that does not follow what the agent
// holds: the agent must drop it, reconnect and ask for a full set.
func TestAgentResyncsOnGap(t *testing.T) {
	exe := newFakeExecutor()
	h := startAgent(t, exe, newFakeDispatcher())
	h.disp.full(t, 1, task("t1", stAssigned, stRunning))
	h.disp.waitState(t, "t1", stRunning)

	s := h.disp.stream(t, 1)
	s.out <- &api.AssignmentsMessage{
		Type: api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL, AppliesTo: 7, ResultsIn: 8,
		Changes: []*api.AssignmentChange{update(task("t2", stAssigned, stRunning))},
	}
	second := h.disp.stream(t, 2)
	if exe.hasController("t2") {
		t.Error("the agent applied a delta that did not follow its sequence")
	}
	if h.disp.sessionCount() < 2 || second.session == s.session {
		t.Errorf("second Assignments call used session %q (first %q); want a new session", second.session, s.session)
	}
	h.disp.full(t, 2, task("t1", stRunning, stRunning), task("t3", stAssigned, stRunning))
	h.disp.waitState(t, "t3", stRunning)
	h.stop()
	if v := exe.verbs("t1"); !slices.Equal(v, []string{"prepare", "start", "wait"}) {
		t.Errorf("t1 calls = %v: a resync must not restart a running task", v)
	}
}

// TestAgentResendsAfterSessionLoss refuses a status report because the
// session expired; the report must reach the dispatcher on the next
// session.
func TestAgentResendsAfterSessionLoss(t *testing.T) {
	tests := []struct {
		name string
		// waitNew holds the refusal until the agent runs on its new
		// session, as a slow raft write on an expired session would.
		waitNew bool
	}{
		{name: "refused before the new session"},
		{name: "refused after the new session opened", waitNew: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			disp := newFakeDispatcher()
			first := true
			disp.updateHook = func(ctx context.Context, req *api.UpdateTaskStatusRequest) error {
				disp.mu.Lock()
				refuse := first
				first = false
				disp.mu.Unlock()
				if !refuse {
					return nil
				}
				disp.endSession(req.GetSessionId())
				if tc.waitNew {
					await.For(t, "agent on its second session", func() (bool, string) {
						disp.mu.Lock()
						defer disp.mu.Unlock()
						return len(disp.streams) >= 2, fmt.Sprintf("%d assignments calls", len(disp.streams))
					})
				}
				return status.Errorf(codes.NotFound, "session %q expired", req.GetSessionId())
			}
			exe := newFakeExecutor()
			h := startAgent(t, exe, disp)
			h.disp.full(t, 1, task("t1", stAssigned, stRunning))
			h.disp.waitState(t, "t1", stRunning)
			if r := h.disp.last("t1"); r.session != "session-2" {
				t.Errorf("RUNNING was recorded on %q, want session-2", r.session)
			}
			checkForward(t, h.disp, "t1")
		})
	}
}

// TestAgentStatusEchoes runs tasks against a dispatcher that sends every
// status report back as an assignment update, as the real one does. The
// echoes must neither restart tasks nor move their state backwards (run
// with -race: updates reach runners while they report).
func TestAgentStatusEchoes(t *testing.T) {
	disp := newFakeDispatcher()
	disp.echo = true
	exe := newFakeExecutor()
	h := startAgent(t, exe, disp)
	var tasks []*api.Task
	for i := range 5 {
		tasks = append(tasks, task(fmt.Sprintf("t%d", i), stAssigned, stRunning))
	}
	h.disp.full(t, 1, tasks...)
	for _, tk := range tasks {
		h.disp.waitState(t, tk.GetId(), stRunning)
	}
	for _, tk := range tasks {
		exe.exit(t, tk.GetId(), nil)
	}
	for _, tk := range tasks {
		h.disp.waitState(t, tk.GetId(), stComplete)
	}
	h.stop()
	for _, tk := range tasks {
		checkForward(t, disp, tk.GetId())
		if v := exe.verbs(tk.GetId()); !slices.Equal(v, []string{"prepare", "start", "wait"}) {
			t.Errorf("%s calls = %v", tk.GetId(), v)
		}
	}
}

// TestAgentStopLeavesContainers stops the agent: containers belong to the
// node and keep running, to be adopted by the next agent.
func TestAgentStopLeavesContainers(t *testing.T) {
	exe := newFakeExecutor()
	h := startAgent(t, exe, newFakeDispatcher())
	h.disp.full(t, 1, task("t1", stAssigned, stRunning), task("t2", stAssigned, stRunning))
	h.disp.waitState(t, "t1", stRunning)
	h.disp.waitState(t, "t2", stRunning)
	select {
	case <-h.agent.Synced():
	default:
		t.Error("Synced not closed after the first full set was applied")
	}
	h.stop()
	if n, m := exe.count("shutdown"), exe.count("remove"); n+m != 0 {
		t.Errorf("stopping the agent made %d shutdown and %d remove calls, want none", n, m)
	}
}

// TestAgentRunWaitsForSession stops the agent while its session is in the
// middle of applying a full set. Run must not return before that work is
// done: a runner created after Run detached the others would run a
// container nobody stops.
func TestAgentRunWaitsForSession(t *testing.T) {
	exe := newFakeExecutor()
	listing := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	exe.listHook = func(ctx context.Context) {
		first := false
		once.Do(func() { first = true })
		if !first {
			return
		}
		close(listing)
		<-ctx.Done()
		// The list was read just as the session ended: it answers anyway.
		<-release
	}
	h := startAgent(t, exe, newFakeDispatcher())
	h.disp.full(t, 1, task("t1", stAssigned, stRunning))
	<-listing
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		h.stop()
	}()
	await.For(t, "Run waiting for its session's work", func() (bool, string) {
		select {
		case <-h.done:
			t.Fatal("Run returned while its session was still applying assignments")
		default:
		}
		return sessionWaiting(), "no goroutine waits in (*Agent).session"
	})
	close(release)
	<-stopped
	if stacks := agentStacks(); stacks != "" {
		t.Errorf("agent goroutines still running after Run returned:\n%s", stacks)
	}
}

func allStacks() []string {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Split(string(buf[:n]), "\n\n")
}

// sessionWaiting reports whether a goroutine sits in (*Agent).session
// waiting for the session's goroutines.
func sessionWaiting() bool {
	for _, g := range allStacks() {
		if strings.Contains(g, "worker.(*Agent).session") && strings.Contains(g, "sync.(*WaitGroup).Wait") {
			return true
		}
	}
	return false
}

// agentStacks returns the stacks of goroutines inside the agent's session
// or assignment code. Only the functions themselves count (the "(" after
// the name): a goroutine that already returned from them and is only
// unwinding its deferred WaitGroup.Done may still show its closure.
func agentStacks() string {
	var out []string
	for _, g := range allStacks() {
		for _, fn := range []string{"(*Agent).session(", "(*Agent).assignments(", "(*Agent).applyFull(", "(*Agent).applyChange(", "(*Agent).reportLoop("} {
			if strings.Contains(g, "worker."+fn) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// recordingNetwork is a NetworkView that writes its calls into the fake
// executor's call log, so their order against container verbs shows.
type recordingNetwork struct{ e *fakeExecutor }

func (n recordingNetwork) Apply(ctx context.Context, delta *api.NetworkDelta, full bool) error {
	what := "delta"
	if full {
		what = "full"
	}
	n.e.record("network-"+what, strings.Join(delta.GetRemovedEndpoints(), ","))
	return nil
}

// TestAgentAppliesNetworkBeforeTasks checks the order the routing mesh
// relies on: the network view of a message (here: the task's backend
// leaving) is applied before the message's task changes (its container
// being stopped), and a delta with only network changes is applied too.
func TestAgentAppliesNetworkBeforeTasks(t *testing.T) {
	exe := newFakeExecutor()
	disp := newFakeDispatcher()
	h := startAgent(t, exe, disp, func(c *Config) { c.Network = recordingNetwork{exe} })
	t1 := task("t1", stAssigned, stRunning)
	s := disp.stream(t, 1)
	disp.mu.Lock()
	disp.sendNetLocked(s, api.AssignmentType_ASSIGNMENT_TYPE_FULL, &api.NetworkDelta{}, []*api.AssignmentChange{update(t1)})
	disp.mu.Unlock()
	disp.waitState(t, "t1", stRunning)
	disp.mu.Lock()
	disp.sendNetLocked(s, api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL, &api.NetworkDelta{RemovedEndpoints: []string{"t1"}},
		[]*api.AssignmentChange{update(withDesired(t1, stShutdown))})
	disp.sendNetLocked(s, api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL, &api.NetworkDelta{RemovedEndpoints: []string{"other"}}, nil)
	disp.mu.Unlock()
	await.For(t, "network-only delta applied", func() (bool, string) {
		return len(exe.verbs("other")) == 1, fmt.Sprint(exe.verbs("other"))
	})
	disp.waitState(t, "t1", stShutdown)
	h.stop()
	want := []string{"network-full", "prepare", "start", "wait", "network-delta", "shutdown", "remove"}
	got := exe.verbs("t1")
	got = slices.Insert(got, 0, exe.verbs("")...)
	if !slices.Equal(got, want) {
		t.Errorf("calls = %v, want %v", got, want)
	}
}

// TestAgentDrainsBackends checks that a running task with network
// attachments is stopped only after the drain delay (here longer than the
// test), while a task without networks stops at once; and that an agent
// stopping meanwhile leaves the draining task's container alone.
func TestAgentDrainsBackends(t *testing.T) {
	exe := newFakeExecutor()
	disp := newFakeDispatcher()
	h := startAgent(t, exe, disp, func(c *Config) { c.DrainDelay = time.Hour })
	backend := task("backend", stAssigned, stRunning)
	backend.Networks = []*api.NetworkAttachment{{NetworkId: "ingress", Addr: "10.0.0.5/24"}}
	plain := task("plain", stAssigned, stRunning)
	disp.full(t, 1, backend, plain)
	disp.waitState(t, "backend", stRunning)
	disp.waitState(t, "plain", stRunning)
	disp.delta(t, 1, update(withDesired(backend, stShutdown)), update(withDesired(plain, stShutdown)))
	disp.waitState(t, "plain", stShutdown)
	if v := exe.verbs("backend"); slices.Contains(v, "shutdown") {
		t.Fatalf("the backend was stopped without draining: %v", v)
	}
	h.stop()
	if v := exe.verbs("backend"); slices.Contains(v, "shutdown") || slices.Contains(v, "remove") {
		t.Errorf("the agent stopping made the draining backend stop: %v", v)
	}
}
