package e2e

import (
	"strings"
	"sync"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
)

// echoV2 is the echo image under a second name: an update from tc.Image
// to it changes every task's image.
const echoV2 = "shoal.test/echo:v2"

// crashArgs make the echo server exit 1 as soon as it listens: an image
// that starts, then crashes.
const crashArgs = "--crash-after 0s --exit-code 1"

// badPortArgs make the echo server exit 2 before it listens: an image
// that cannot start.
const badPortArgs = "--http-port 70000"

// meshLoad sends batches of requests through the routing mesh, each
// batch to the next of its targets, until it is stopped, and adds up what
// the batches saw.
type meshLoad struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	total   testimage.LoadReport
	batches int
	runErr  error
}

// loadBatch is the size of one batch: small, so that a stop is quick.
const loadBatch = 100

func (c *labCluster) startLoad(client lab.Client, targets []string) *meshLoad {
	l := &meshLoad{stop: make(chan struct{}), done: make(chan struct{}), total: testimage.LoadReport{Tasks: map[string]int{}}}
	go func() {
		defer close(l.done)
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			default:
			}
			rep, err := c.tryLoad(client, loadBatch, targets[i%len(targets)])
			l.mu.Lock()
			if err != nil {
				l.runErr = err
				l.mu.Unlock()
				return
			}
			l.batches++
			l.total.OK += rep.OK
			l.total.Failed += rep.Failed
			for _, e := range rep.Errors {
				if len(l.total.Errors) < 10 {
					l.total.Errors = append(l.total.Errors, targets[i%len(targets)]+": "+e)
				}
			}
			for task, n := range rep.Tasks {
				l.total.Tasks[task] += n
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// finish stops the load after its batch in flight and returns its sum.
func (l *meshLoad) finish(t *testing.T) testimage.LoadReport {
	t.Helper()
	close(l.stop)
	<-l.done
	if l.runErr != nil {
		t.Fatalf("load through the mesh: %v", l.runErr)
	}
	return l.total
}

// rolloutState is the service's update status as a user reads it.
func (c *labCluster) rolloutState(t *testing.T, via, service string) string {
	t.Helper()
	return strings.TrimSpace(c.ctl(t, via, "service", "inspect", "--format", "{{.UpdateStatus.State}} {{.UpdateStatus.Message}}", service))
}

// pausedUpdate runs a start-first update of web, one slot at a time, to
// args, which fail: it must exit non-zero, say that it paused, which task
// failed with what error (wantErr) and what to do, and leave the service
// paused.
func (c *labCluster) pausedUpdate(t *testing.T, via, args, wantErr string) {
	t.Helper()
	out, err := c.try(t, via, "service", "update", "--args", args, "--update-order", "start-first", "--update-parallelism", "1", "web")
	if err == nil {
		t.Fatalf("service update to the failing %q succeeded:\n%s", args, out)
	}
	if !strings.Contains(out, "update paused: task web.") || !strings.Contains(out, wantErr) ||
		!strings.Contains(out, "shoalctl service rollback web") {
		t.Errorf("service update does not name the failed task and its error (%s), or what to do:\n%s", wantErr, out)
	}
	if st := c.rolloutState(t, via, "web"); !strings.HasPrefix(st, "UPDATE_STATE_PAUSED update paused: task web.") {
		t.Errorf("update status %q", st)
	}
}

// rollBack runs `service rollback web`, which must end with every slot
// running the first image again.
func (c *labCluster) rollBack(t *testing.T, via string) {
	t.Helper()
	if out := c.ctl(t, via, "service", "rollback", "web"); !strings.Contains(out, "service web rolled back") {
		t.Errorf("service rollback printed:\n%s", out)
	}
	runningWith(t, "after the rollback", c.converged(t, "web", want{replicas: 6}), tc.Image, "")
}

// runningWith checks that every running task of the service runs image
// with args.
func runningWith(t *testing.T, what string, running map[string]*api.Task, image, args string) {
	t.Helper()
	for _, task := range running {
		c := task.GetSpec().GetContainer()
		if c.GetImage() != image || strings.Join(c.GetArgs(), " ") != args {
			t.Errorf("%s: task %s runs %s %q, want %s %q", what, api.TaskName(task), c.GetImage(), c.GetArgs(), image, args)
		}
	}
}

// TestRollingUpdate is a user's session of updates on a lab of one
// manager and two workers, with a service of 6 replicas published on the
// routing mesh: an image update two slots at a time, start-first, while
// a client keeps sending requests through every node (none may fail);
// `service rollback` back to the old image; an update to a command that
// cannot start, which pauses and says why while the old tasks serve on;
// one that crashes after it started, which pauses too; rollbacks of those;
// and the same crash with the failure action rollback, which returns the
// service to its previous spec by itself.
func TestRollingUpdate(t *testing.T) {
	c := newLabCluster(t, 1, 2, echoV2)
	client, err := c.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	m := c.manager(t)
	var targets []string
	for _, n := range c.Nodes() {
		targets = append(targets, "http://"+n.Addr.String()+":8080")
	}
	c.ctl(t, m, "service", "create", "--name", "web", "--replicas", "6", "--publish", "8080:80", tc.Image)
	before := c.converged(t, "web", want{replicas: 6})

	t.Run("start-first update under load", func(t *testing.T) {
		c.logsOnFailure(t)
		load := c.startLoad(client, targets)
		out := c.ctl(t, m, "service", "update", "--image", echoV2, "--update-parallelism", "2", "--update-order", "start-first", "web")
		rep := load.finish(t)
		if !strings.Contains(out, "completed: 6 of 6 slots updated") || !strings.Contains(out, "service web updated") {
			t.Errorf("service update did not report the rollout:\n%s", out)
		}
		if rep.Failed != 0 || rep.OK == 0 {
			t.Errorf("%d of %d requests through the mesh failed during the update: %v", rep.Failed, rep.OK+rep.Failed, rep.Errors)
		}
		t.Logf("%d requests in %d batches during the update, answered by %d tasks", rep.OK, load.batches, len(rep.Tasks))
		running := c.converged(t, "web", want{replicas: 6})
		runningWith(t, "after the update", running, echoV2, "")
		for id := range running {
			if before[id] != nil {
				t.Errorf("task %s was not replaced", id)
			}
		}
		if st := c.rolloutState(t, m, "web"); st != "UPDATE_STATE_COMPLETED update completed" {
			t.Errorf("update status %q", st)
		}
		servedOnlyBy(t, "web after the update", c.loadFrom(t, client, meshRequests, targets[0]), meshRequests, taskNames(running))
	})

	t.Run("rollback returns the old image", func(t *testing.T) {
		c.logsOnFailure(t)
		c.rollBack(t, m)
		if st := c.rolloutState(t, m, "web"); !strings.HasPrefix(st, "UPDATE_STATE_ROLLBACK_COMPLETED") {
			t.Errorf("update status %q", st)
		}
	})

	t.Run("an update that cannot start pauses and the old tasks serve on", func(t *testing.T) {
		c.logsOnFailure(t)
		c.pausedUpdate(t, m, badPortArgs, "non-zero exit (2)")
		// The new task died before it listened, so it never ran: the
		// old task it was to replace (start-first) serves on, as do the
		// others, and the mesh never sent it a request.
		running := c.converged(t, "web", want{replicas: 6})
		runningWith(t, "paused", running, tc.Image, "")
		servedOnlyBy(t, "web while paused", c.loadFrom(t, client, meshRequests, targets[1]), meshRequests, taskNames(running))

		c.rollBack(t, m)
	})

	t.Run("a crashing update pauses", func(t *testing.T) {
		c.logsOnFailure(t)
		c.pausedUpdate(t, m, crashArgs, "non-zero exit (1)")
		// This one listened, then crashed: it ran, so start-first stopped
		// the old task and the rollout took the next slot before the
		// crash was known. Those slots are the restart policy's now; the
		// others serve on. See docs/updates.md.
		tc.Eventually(t, clusterConverge, "4 slots serving the old spec", func() (bool, string) {
			old := 0
			for _, task := range c.tasks(t, m, "web") {
				if task.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && task.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING &&
					len(task.GetSpec().GetContainer().GetArgs()) == 0 {
					old++
				}
			}
			return old >= 4, c.ps(t, m, "web")
		})
		c.rollBack(t, m)
	})

	t.Run("failure action rollback", func(t *testing.T) {
		c.logsOnFailure(t)
		out, err := c.try(t, m, "service", "update", "--args", crashArgs, "--update-failure-action", "rollback",
			"--update-order", "stop-first", "--update-parallelism", "1", "web")
		if err == nil {
			t.Fatalf("service update of a crashing command succeeded:\n%s", out)
		}
		if !strings.Contains(out, "update rolled back: task web.") || !strings.Contains(out, "non-zero exit (1)") ||
			!strings.Contains(out, "service web runs its previous spec again") {
			t.Errorf("service update does not say it rolled back and why:\n%s", out)
		}
		runningWith(t, "rolled back", c.converged(t, "web", want{replicas: 6}), tc.Image, "")
		if st := c.rolloutState(t, m, "web"); !strings.HasPrefix(st, "UPDATE_STATE_ROLLBACK_COMPLETED rollback completed: update rolled back: task web.") {
			t.Errorf("update status %q", st)
		}
		// An automatic rollback leaves no spec to roll back to.
		if out, err := c.try(t, m, "service", "rollback", "web"); err == nil || !strings.Contains(out, "no previous spec") {
			t.Errorf("rollback after an automatic rollback: %v\n%s", err, out)
		}
	})

	t.Run("an update whose health check fails rolls back", func(t *testing.T) {
		c.logsOnFailure(t)
		// The new tasks start and listen, but their check (a request to a
		// port nobody listens on) never passes: they never count as
		// started, are failed as unhealthy, and the rollout rolls back.
		out, err := c.try(t, m, "service", "update", "--health-cmd", "/echo get http://127.0.0.1:1/", "--health-interval", "300ms",
			"--health-retries", "1", "--update-failure-action", "rollback", "--update-order", "start-first", "--update-parallelism", "1", "web")
		if err == nil {
			t.Fatalf("service update to a failing health check succeeded:\n%s", out)
		}
		if !strings.Contains(out, "update rolled back: task web.") || !strings.Contains(out, "unhealthy container") {
			t.Errorf("service update does not say it rolled back because a task was unhealthy:\n%s", out)
		}
		running := c.converged(t, "web", want{replicas: 6})
		runningWith(t, "rolled back from a failing health check", running, tc.Image, "")
		for _, task := range running {
			if hc := task.GetSpec().GetContainer().GetHealthcheck(); hc != nil {
				t.Errorf("task %s still has the health check %v after the rollback", api.TaskName(task), hc)
			}
		}
	})
}
