package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	tc "github.com/shoal-project/shoal/internal/testcluster"
)

// converge is generous: it bounds waiting, it does not measure speed.
const converge = 60 * time.Second

func runningTasks(tasks []*api.Task) []*api.Task {
	var out []*api.Task
	for _, t := range tasks {
		if t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && t.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING {
			out = append(out, t)
		}
	}
	return out
}

func runningContainers(n *tc.Node) map[string]tc.Container {
	out := map[string]tc.Container{}
	for _, c := range n.Containers() {
		if c.Status == "running" {
			out[c.TaskID] = c
		}
	}
	return out
}

// waitRunning waits until the service has exactly want running tasks, each
// with a running container, and no other container is left.
func waitRunning(t *testing.T, n *tc.Node, service string, want int) map[string]tc.Container {
	t.Helper()
	var got map[string]tc.Container
	tc.Eventually(t, converge, fmt.Sprintf("%d running replicas of %s", want, service), func() (bool, string) {
		tasks := runningTasks(n.Tasks(service))
		got = runningContainers(n)
		all := n.Containers()
		if len(tasks) != want || len(got) != want || len(all) != want {
			return false, fmt.Sprintf("%d running tasks, %d running containers, %d containers\n%s", len(tasks), len(got), len(all), n.Ctl("service", "ps", service))
		}
		for _, task := range tasks {
			if _, ok := got[task.GetId()]; !ok {
				return false, "task " + task.GetId() + " has no running container"
			}
		}
		return true, ""
	})
	return got
}

func environ(t *testing.T, pid uint32) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), "\x00", "\n")
}

// TestServiceLifecycle is a user's first session: create, look, lose a
// container, scale, restart the daemon, remove.
func TestServiceLifecycle(t *testing.T) {
	n := tc.NewSingle(t)

	out := n.Ctl("service", "create", "--name", "web", "--replicas", "3", "--env", "GREETING=hi", tc.Image)
	if !strings.Contains(out, "3 out of 3 tasks") {
		t.Errorf("service create did not report convergence:\n%s", out)
	}
	ctrs := waitRunning(t, n, "web", 3)
	for _, c := range ctrs {
		if env := environ(t, c.PID); !strings.Contains(env, "GREETING=hi") || !strings.Contains(env, "SHOAL_SERVICE_NAME=web") {
			t.Errorf("container %s environment lacks the service's env:\n%s", c.ID, env)
		}
		body, err := n.HTTPGet(c.PID, 80, "/")
		if err != nil {
			t.Fatalf("GET / in task %s: %v", c.TaskID, err)
		}
		if !strings.Contains(body, "env GREETING=hi") || !strings.Contains(body, "task=web."+c.Slot+"."+c.TaskID) {
			t.Errorf("task %s answered:\n%s", c.TaskID, body)
		}
	}
	if ls := n.Ctl("service", "ls"); !strings.Contains(ls, "web") || !strings.Contains(ls, "3/3") {
		t.Errorf("service ls:\n%s", ls)
	}
	if inspect := n.Ctl("service", "inspect", "web"); !strings.Contains(inspect, "GREETING=hi") {
		t.Errorf("service inspect lacks the env:\n%s", inspect)
	}

	t.Run("killed container is replaced", func(t *testing.T) {
		var victim tc.Container
		for _, c := range ctrs {
			victim = c
			break
		}
		if err := syscall.Kill(int(victim.PID), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		after := waitRunning(t, n, "web", 3)
		if _, ok := after[victim.TaskID]; ok {
			t.Fatalf("killed task %s still counted as running", victim.TaskID)
		}
		var old *api.Task
		for _, task := range n.Tasks("web") {
			if task.GetId() == victim.TaskID {
				old = task
			}
		}
		if old == nil || old.GetStatus().GetState() != api.TaskState_TASK_STATE_FAILED || !strings.Contains(old.GetStatus().GetErr(), "137") {
			t.Fatalf("killed task should be kept as failed with exit 137, got %v", old)
		}
		ps := n.Ctl("service", "ps", "web")
		if !strings.Contains(ps, `\_ web.`+victim.Slot) || !strings.Contains(ps, "Failed") {
			t.Errorf("service ps does not show the history of slot %s:\n%s", victim.Slot, ps)
		}
	})

	t.Run("scale", func(t *testing.T) {
		n.Ctl("service", "scale", "web=5")
		waitRunning(t, n, "web", 5)
		n.Ctl("service", "scale", "web=1")
		waitRunning(t, n, "web", 1)
	})

	t.Run("shoald restart adopts containers", func(t *testing.T) {
		before := waitRunning(t, n, "web", 1)
		tasksBefore := len(n.Tasks("web"))
		n.Kill()
		for _, c := range before {
			if err := syscall.Kill(int(c.PID), 0); err != nil {
				t.Fatalf("container %s died with shoald: %v", c.ID, err)
			}
		}
		n.Start("run")
		// Watch for a while: a duplicate or a restart would show up as a
		// new task or a new pid.
		for i := 0; i < 30; i++ {
			after := runningContainers(n)
			if len(after) != len(before) {
				t.Fatalf("after restart: %d running containers, want %d", len(after), len(before))
			}
			for id, c := range before {
				if after[id].PID != c.PID {
					t.Fatalf("task %s: pid %d after restart, was %d (restarted instead of adopted)", id, after[id].PID, c.PID)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got := len(n.Tasks("web")); got != tasksBefore {
			t.Fatalf("after restart the service has %d tasks, had %d:\n%s", got, tasksBefore, n.Ctl("service", "ps", "web"))
		}
		if len(runningTasks(n.Tasks("web"))) != 1 {
			t.Fatalf("task not running after restart:\n%s", n.Ctl("service", "ps", "web"))
		}
	})

	t.Run("rm removes containers and snapshots", func(t *testing.T) {
		n.Ctl("service", "rm", "web")
		tc.Eventually(t, converge, "containers and snapshots removed", func() (bool, string) {
			cs, snaps := n.Containers(), n.Snapshots()
			return len(cs) == 0 && snaps == 0, fmt.Sprintf("%d containers, %d snapshots", len(cs), snaps)
		})
		if out, err := n.Try("service", "ps", "web"); err == nil {
			t.Fatalf("service ps after rm succeeded:\n%s", out)
		}
	})
}

// TestCrashLoopBacksOff: a task that dies at once is restarted with a
// growing delay that users can see, not in a hot loop.
func TestCrashLoopBacksOff(t *testing.T) {
	n := tc.NewSingle(t)
	n.Ctl("service", "create", "--detach", "--name", "crash", "--env", "ECHO_CRASH_AFTER=50ms", tc.Image)
	var newest *api.Task
	tc.Eventually(t, converge, "several back-off steps", func() (bool, string) {
		newest = nil
		for _, task := range n.Tasks("crash") {
			if newest == nil || task.GetRestartCount() > newest.GetRestartCount() {
				newest = task
			}
		}
		return newest.GetBackoffStep() >= 4, fmt.Sprintf("newest task: %v", newest)
	})
	// Steps 1..4 wait 100+200+400+800 ms at least; had the slot been
	// restarted without delay, many more tasks would exist by now.
	if newest.GetRestartCount() > uint64(newest.GetBackoffStep())+2 {
		t.Fatalf("restart_count %d with back-off step %d: restarts are not backing off", newest.GetRestartCount(), newest.GetBackoffStep())
	}
	ps := n.Ctl("service", "ps", "crash")
	if !strings.Contains(ps, "non-zero exit (3)") {
		t.Errorf("service ps does not show the exit code:\n%s", ps)
	}
	if len(n.Tasks("crash")) > 6 {
		t.Errorf("history not pruned to the current task and 5 old ones:\n%s", ps)
	}
	// The back-off itself is visible on the waiting task.
	tc.Eventually(t, converge, "a delayed restart in service ps", func() (bool, string) {
		ps := n.Ctl("service", "ps", "crash", "--no-trunc")
		return strings.Contains(ps, "Restart delayed"), ps
	})
}
