package worker

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/worker/exec"
)

const (
	hStarting  = api.TaskHealth_TASK_HEALTH_STARTING
	hHealthy   = api.TaskHealth_TASK_HEALTH_HEALTHY
	hUnhealthy = api.TaskHealth_TASK_HEALTH_UNHEALTHY
)

// TestHealthTracker follows Docker's rules for a task's health through
// sequences of check results: a pass makes it healthy at once, retries
// failures in a row make it unhealthy, and failures do not count while it
// is still starting within its start period.
func TestHealthTracker(t *testing.T) {
	type result struct {
		at     time.Duration // since the container started
		passed bool
	}
	pass := func(at time.Duration) result { return result{at, true} }
	fail := func(at time.Duration) result { return result{at, false} }
	s := time.Second
	tests := []struct {
		name        string
		retries     int32
		startPeriod time.Duration
		initial     api.TaskHealth // as reported before (adoption); 0 for a new task
		results     []result
		want        []api.TaskHealth
	}{
		{"a pass makes it healthy", 3, 0, 0, []result{pass(s)}, []api.TaskHealth{hHealthy}},
		{"retries failures make it unhealthy", 3, 0, 0,
			[]result{fail(s), fail(2 * s), fail(3 * s)}, []api.TaskHealth{hStarting, hStarting, hUnhealthy}},
		{"failures within the start period do not count", 1, 10 * s, 0,
			[]result{fail(s), fail(5 * s), fail(9 * s), fail(10 * s)}, []api.TaskHealth{hStarting, hStarting, hStarting, hUnhealthy}},
		{"a pass ends the start period", 1, 10 * s, 0,
			[]result{pass(s), fail(2 * s)}, []api.TaskHealth{hHealthy, hUnhealthy}},
		{"a pass resets the count", 3, 0, 0,
			[]result{pass(s), fail(2 * s), fail(3 * s), pass(4 * s), fail(5 * s), fail(6 * s), fail(7 * s)},
			[]api.TaskHealth{hHealthy, hHealthy, hHealthy, hHealthy, hHealthy, hHealthy, hUnhealthy}},
		{"a check that started in the start period is forgiven", 1, 10 * s, 0,
			[]result{fail(10*s - time.Millisecond)}, []api.TaskHealth{hStarting}},
		{"an adopted healthy task has no start period left", 1, time.Hour, hHealthy,
			[]result{fail(s)}, []api.TaskHealth{hUnhealthy}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
			hc := &api.HealthConfig{Retries: tc.retries, StartPeriod: durationpb.New(tc.startPeriod)}
			tr := newHealthTracker(hc, start, tc.initial)
			var got []api.TaskHealth
			for _, r := range tc.results {
				got = append(got, tr.record(start.Add(r.at), r.passed))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("healths %v, want %v", got, tc.want)
			}
		})
	}
}

// checked is an assigned task with a health check every few milliseconds.
func checked(id string, state api.TaskState, retries int32, startPeriod time.Duration) *api.Task {
	tk := task(id, state, stRunning)
	tk.Spec.Container.Healthcheck = &api.HealthConfig{
		Test:        []string{"CMD", "/check"},
		Interval:    durationpb.New(5 * time.Millisecond),
		Timeout:     durationpb.New(time.Second),
		Retries:     retries,
		StartPeriod: durationpb.New(startPeriod),
	}
	return tk
}

// waitHealth waits until a task's latest report is RUNNING with health h.
func (d *fakeDispatcher) waitHealth(t *testing.T, id string, h api.TaskHealth) *api.TaskStatus {
	t.Helper()
	await.For(t, fmt.Sprintf("task %s running and %s", id, api.HealthName(h)), func() (bool, string) {
		st := d.last(id).status
		return st.GetState() == stRunning && st.GetHealth() == h, fmt.Sprintf("latest report %v", st)
	})
	return d.last(id).status
}

// firstRunning is the first RUNNING report of a task.
func (d *fakeDispatcher) firstRunning(t *testing.T, id string) *api.TaskStatus {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.reports[id] {
		if r.status.GetState() == stRunning {
			return r.status
		}
	}
	t.Fatalf("task %s was never reported running", id)
	return nil
}

// TestAgentReportsHealth: a task with a health check is reported RUNNING
// and STARTING together (no manager may see it running unchecked), then
// HEALTHY once a check passes, keeping the time it started running; a task
// without one is reported with no health and never checked.
func TestAgentReportsHealth(t *testing.T) {
	exe := newFakeExecutor()
	h := startAgent(t, exe, newFakeDispatcher())
	h.disp.full(t, 1, checked("t1", stAssigned, 3, 0), task("t2", stAssigned, stRunning))

	healthy := h.disp.waitHealth(t, "t1", hHealthy)
	first := h.disp.firstRunning(t, "t1")
	if first.GetHealth() != hStarting {
		t.Errorf("first RUNNING report has health %v, want STARTING", first.GetHealth())
	}
	if !healthy.GetTimestamp().AsTime().Equal(first.GetTimestamp().AsTime()) || healthy.GetMessage() != first.GetMessage() {
		t.Errorf("the health change moved the RUNNING report's time or message: %v then %v", first, healthy)
	}

	h.disp.waitState(t, "t2", stRunning)
	if got := h.disp.firstRunning(t, "t2").GetHealth(); got != api.TaskHealth_TASK_HEALTH_UNSPECIFIED {
		t.Errorf("task without a health check reported health %v", got)
	}
	if n := exe.probeCount("t2"); n != 0 {
		t.Errorf("task without a health check was checked %d times", n)
	}
	checkForward(t, h.disp, "t1")
}

// TestAgentFailsUnhealthyTask: once retries checks fail in a row, the
// task is reported FAILED (unhealthy, with the check's error), which gets
// it replaced, and its container is stopped and removed without waiting
// for the managers.
func TestAgentFailsUnhealthyTask(t *testing.T) {
	exe := newFakeExecutor()
	h := startAgent(t, exe, newFakeDispatcher())
	h.disp.full(t, 1, checked("t1", stAssigned, 2, 0))
	h.disp.waitHealth(t, "t1", hHealthy)

	exe.setProbe("t1", errors.New("health check exited 1: no database"))
	st := h.disp.waitState(t, "t1", stFailed)
	if st.GetHealth() != hUnhealthy || !strings.Contains(st.GetErr(), "unhealthy container: health check exited 1: no database") {
		t.Errorf("failed report: health %v, err %q; want UNHEALTHY and the check's error", st.GetHealth(), st.GetErr())
	}
	if st.GetStartedAt() == nil {
		t.Error("the failed report lost started_at, which the restart back-off needs")
	}
	await.For(t, "container removed", func() (bool, string) {
		v := exe.verbs("t1")
		return slices.Equal(v, []string{"prepare", "start", "wait", "shutdown", "remove"}), fmt.Sprint(v)
	})
	n := exe.probeCount("t1")
	time.Sleep(50 * time.Millisecond) // ten intervals
	if got := exe.probeCount("t1"); got != n {
		t.Errorf("checks went on after the task failed: %d, then %d", n, got)
	}
	// The managers' answer (desired SHUTDOWN) changes nothing more.
	h.disp.delta(t, 1, update(withDesired(checked("t1", stFailed, 2, 0), stShutdown)))
	h.stop()
	if v := exe.verbs("t1"); !slices.Equal(v, []string{"prepare", "start", "wait", "shutdown", "remove"}) {
		t.Errorf("executor calls = %v", v)
	}
	if last := h.disp.last("t1").status; last.GetState() != stFailed {
		t.Errorf("last report %v, want FAILED", last)
	}
}

// TestAgentHealthStartPeriod keeps a task whose checks fail STARTING for
// its start period, and makes it healthy at its first pass.
func TestAgentHealthStartPeriod(t *testing.T) {
	exe := newFakeExecutor()
	exe.setProbe("t1", errors.New("health check exited 1: warming up"))
	h := startAgent(t, exe, newFakeDispatcher())
	h.disp.full(t, 1, checked("t1", stAssigned, 1, time.Hour))
	await.For(t, "several failed checks", func() (bool, string) {
		n := exe.probeCount("t1")
		return n >= 5, fmt.Sprintf("%d checks", n)
	})
	if st := h.disp.last("t1").status; st.GetState() != stRunning || st.GetHealth() != hStarting {
		t.Fatalf("after failures within the start period: %v, want RUNNING and STARTING", st)
	}
	exe.setProbe("t1", nil)
	h.disp.waitHealth(t, "t1", hHealthy)
}

// TestAgentHealthEndsWithTask: a task told to stop is shut down, not
// failed, whatever its checks say afterwards, and its checks stop.
func TestAgentHealthEndsWithTask(t *testing.T) {
	exe := newFakeExecutor()
	h := startAgent(t, exe, newFakeDispatcher())
	t1 := checked("t1", stAssigned, 1, 0)
	h.disp.full(t, 1, t1)
	h.disp.waitHealth(t, "t1", hHealthy)
	h.disp.delta(t, 1, update(withDesired(t1, stShutdown)))
	h.disp.waitState(t, "t1", stShutdown)
	exe.setProbe("t1", errors.New("health check exited 1"))
	n := exe.probeCount("t1")
	time.Sleep(50 * time.Millisecond) // ten intervals
	if got := exe.probeCount("t1"); got != n {
		t.Errorf("checks went on after the task stopped: %d, then %d", n, got)
	}
	h.stop()
	if states := h.disp.states("t1"); slices.Contains(states, stFailed) {
		t.Errorf("a stopped task was failed: %v", states)
	}
}

// TestAgentAdoptionKeepsHealth: after a restart of the agent, a healthy
// task stays healthy (it keeps serving) while its checks resume, and its
// start period, counted from its start long ago, is over.
func TestAgentAdoptionKeepsHealth(t *testing.T) {
	exe := newFakeExecutor()
	exe.containers = []exec.Container{{ID: "c-t1", TaskID: "t1", Running: true}}
	exe.prepareErr["t1"] = exec.ErrTaskPrepared
	h := startAgent(t, exe, newFakeDispatcher())
	t1 := checked("t1", stRunning, 1, time.Hour)
	t1.Status = &api.TaskStatus{State: stRunning, Health: hHealthy, StartedAt: timestamppb.New(time.Now().Add(-2 * time.Hour))}
	h.disp.full(t, 1, t1)
	await.For(t, "checks resumed", func() (bool, string) {
		n := exe.probeCount("t1")
		return n >= 2, fmt.Sprintf("%d checks", n)
	})
	exe.setProbe("t1", errors.New("health check exited 1"))
	st := h.disp.waitState(t, "t1", stFailed)
	if !strings.Contains(st.GetErr(), "unhealthy container") {
		t.Errorf("err = %q", st.GetErr())
	}
	h.stop()
	for _, r := range h.disp.reports["t1"] {
		if r.status.GetHealth() == hStarting {
			t.Errorf("an adopted healthy task was reported starting: %v", r.status)
		}
	}
}
