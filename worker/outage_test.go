package worker

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/seal"
	"github.com/shoal-project/shoal/worker/exec"
)

// noFailures fails the test if any task was reported in a state other
// than RUNNING after it ran: a runtime outage ends no task.
func noFailures(t *testing.T, d *fakeDispatcher, ids ...string) {
	t.Helper()
	for _, id := range ids {
		for _, st := range d.states(id) {
			if st > stRunning {
				t.Errorf("task %s reported %v during a runtime outage; reports: %v", id, api.StateName(st), d.states(id))
				break
			}
		}
	}
}

// count returns how many times verb appears in verbs.
func count(verbs []string, verb string) int {
	n := 0
	for _, v := range verbs {
		if v == verb {
			n++
		}
	}
	return n
}

// TestAgentSurvivesRuntimeRestart: containerd restarts under a running
// task. The broken wait is no exit: the agent reports nothing, waits again
// on the same container once the runtime answers, and never starts,
// stops or removes it.
func TestAgentSurvivesRuntimeRestart(t *testing.T) {
	exe := newFakeExecutor()
	h := startAgent(t, exe, newFakeDispatcher())
	h.disp.full(t, 1, task("t1", stAssigned, stRunning))
	h.disp.waitState(t, "t1", stRunning)
	await.For(t, "wait attached", func() bool { return slices.Contains(exe.verbs("t1"), "wait") })

	// The restart: the wait breaks, and the runtime is away a moment.
	exe.setDown(true)
	exe.exit(t, "t1", fmt.Errorf("wait for task t1: %w: error reading from server: EOF", exec.ErrRuntimeUnavailable))
	await.For(t, "the agent retrying while the runtime is down", func() (bool, string) {
		v := exe.verbs("t1")
		return slices.Contains(v, "down-wait"), fmt.Sprint(v)
	})
	exe.setDown(false)
	await.For(t, "waiting again on the same container", func() (bool, string) {
		v := exe.verbs("t1")
		return count(v, "wait") == 2, fmt.Sprint(v)
	})
	time.Sleep(200 * time.Millisecond) // any false report would be on its way
	noFailures(t, h.disp, "t1")
	for _, v := range []string{"start", "shutdown", "remove"} {
		if count(exe.verbs("t1"), v) > map[string]int{"start": 1}[v] {
			t.Errorf("executor calls = %v: the runtime restart made the agent %s the task", exe.verbs("t1"), v)
		}
	}
	// The process still runs, and its real end is reported.
	exe.exit(t, "t1", &exec.ExitError{Code: 2})
	st := h.disp.waitState(t, "t1", stFailed)
	if !strings.Contains(st.GetErr(), "non-zero exit (2)") {
		t.Errorf("err = %q, want the process's own exit", st.GetErr())
	}
}

// TestAgentStartsWhileRuntimeDown: shoald restarts while containerd is
// down. The agent opens its session at once (the node is reported, not
// marked down), keeps its tasks as they were without reporting anything
// about them, and when the runtime answers adopts them (never starting
// one again) and removes only the containers of tasks it no longer owns.
func TestAgentStartsWhileRuntimeDown(t *testing.T) {
	dir := t.TempDir()
	// What the earlier run of the agent saved: two running tasks, one of
	// which the managers have since moved away.
	saved := &api.AssignmentsMessage{Type: api.AssignmentType_ASSIGNMENT_TYPE_FULL}
	for _, id := range []string{"t1", "moved"} {
		saved.Changes = append(saved.Changes, update(task(id, stRunning, stRunning)))
	}
	key := seal.NewKey()
	writeSaved(t, dir, key, saved)
	exe := newFakeExecutor()
	exe.containers = []exec.Container{
		{ID: "c-t1", TaskID: "t1", ServiceID: "svc", Slot: 1, Running: true},
		{ID: "c-moved", TaskID: "moved", ServiceID: "svc", Slot: 2, Running: true},
		{ID: "c-old", TaskID: "old", ServiceID: "svc", Slot: 3},
	}
	exe.prepareErr["t1"] = exec.ErrTaskPrepared
	exe.prepareErr["moved"] = exec.ErrTaskPrepared
	exe.setDown(true)

	h := startAgent(t, exe, newFakeDispatcher(), withState(dir, key))
	await.For(t, "a session while the runtime is down", func() bool { return h.disp.sessionCount() == 1 })
	h.disp.full(t, 1, task("t1", stRunning, stRunning))
	await.For(t, "adoption retried while the runtime is down", func() (bool, string) {
		v := exe.verbs("t1")
		return count(v, "down-prepare") >= 2, fmt.Sprint(v)
	})
	time.Sleep(300 * time.Millisecond)
	if n := h.disp.sessionCount(); n != 1 {
		t.Errorf("%d sessions opened while the runtime was down, want the first kept", n)
	}
	noFailures(t, h.disp, "t1", "moved")
	for _, id := range []string{"t1", "moved", "old"} {
		if v := exe.verbs(id); slices.ContainsFunc(v, func(s string) bool { return !strings.HasPrefix(s, "down-") }) {
			t.Errorf("task %s: executor calls %v while the runtime was down", id, v)
		}
	}

	exe.setDown(false)
	await.For(t, "t1 adopted and waited on", func() (bool, string) {
		v := exe.verbs("t1")
		return slices.Contains(v, "wait"), fmt.Sprint(v)
	})
	await.For(t, "containers of tasks no longer owned removed", func() (bool, string) {
		v, w := exe.verbs("moved"), exe.verbs("old")
		return slices.Contains(v, "remove") && slices.Contains(w, "remove"), fmt.Sprintf("moved: %v, old: %v", v, w)
	})
	time.Sleep(200 * time.Millisecond)
	noFailures(t, h.disp, "t1")
	if v := exe.verbs("t1"); slices.Contains(v, "start") || slices.Contains(v, "shutdown") || slices.Contains(v, "remove") {
		t.Errorf("t1: executor calls %v, want it adopted (prepare, wait) and left running", v)
	}
	if n := h.disp.sessionCount(); n != 1 {
		t.Errorf("%d sessions, want the first kept throughout", n)
	}
}
