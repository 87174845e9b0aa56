package e2e

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/internal/servicecheck"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
)

// healthRequests is how many requests each node gets per check of who
// serves.
const healthRequests = 40

// TestHealthGatesTraffic is issue 10's health check session on a lab of one
// manager and two workers: a published service whose tasks check their
// health with --health-cmd. A task gets requests only once its check has
// passed, through every node; when its check starts failing it leaves every
// load balancer, fails with the reason in `service ps`, and its slot gets a
// new task, which again serves only once healthy. Then an image with a
// HEALTHCHECK, loaded with `shoalctl image load`: its check applies without
// a flag, and `service create` waits for it.
//
// The echo tasks are told when to pass or fail (echo set-health, run inside
// a task's container), so nothing here races a clock: a task's check fails
// until the test says otherwise, and its start period (10m) keeps those
// failures from counting until it has passed once.
func TestHealthGatesTraffic(t *testing.T) {
	c := newLabCluster(t, 1, 2)
	c.logsOnFailure(t)
	client, err := c.AddClient()
	if err != nil {
		t.Fatal(err)
	}
	m := c.manager(t)
	var urls []string
	for _, n := range c.Nodes() {
		urls = append(urls, "http://"+n.Addr.String()+":8080")
	}

	c.ctl(t, m, "service", "create", "--name", "hc", "--replicas", "2", "--publish", "8080:80", "--detach",
		"--env", "ECHO_HEALTHY_AFTER=1h",
		"--health-cmd", "/echo health", "--health-interval", "300ms", "--health-retries", "2", "--health-start-period", "10m",
		tc.Image)

	// Both run; neither has passed its check: no request reaches them.
	tasks := c.healthWait(t, m, "hc", map[uint64]api.TaskHealth{1: hStarting, 2: hStarting})
	if ps := c.ps(t, m, "hc"); strings.Count(ps, "Running (starting)") != 2 {
		t.Errorf("service ps does not show both tasks starting:\n%s", ps)
	}
	for _, url := range urls {
		if rep := c.loadFrom(t, client, healthRequests, url); rep.OK != 0 {
			t.Errorf("%s answered %d requests (by %v) before any health check passed", url, rep.OK, rep.Tasks)
		}
	}

	// Slot 1's check passes: it alone serves, through every node.
	c.setHealth(t, tasks[1], "ok")
	tasks = c.healthWait(t, m, "hc", map[uint64]api.TaskHealth{1: hHealthy, 2: hStarting})
	c.servedBy(t, client, urls, tasks[1])
	// And slot 2's.
	c.setHealth(t, tasks[2], "ok")
	tasks = c.healthWait(t, m, "hc", map[uint64]api.TaskHealth{1: hHealthy, 2: hHealthy})
	c.servedBy(t, client, urls, tasks[1], tasks[2])
	if ps := c.ps(t, m, "hc"); strings.Count(ps, "Running (healthy)") != 2 {
		t.Errorf("service ps does not show both tasks healthy:\n%s", ps)
	}

	// Slot 1's check fails: it is failed as unhealthy, leaves the load
	// balancers, and is replaced by a task that is starting, so slot 2
	// alone serves.
	sick := tasks[1]
	c.setHealth(t, sick, "fail")
	tc.Eventually(t, clusterConverge, "the sick task failed as unhealthy", func() (bool, string) {
		for _, task := range c.tasks(t, m, "hc") {
			if task.GetId() == sick.GetId() {
				st := task.GetStatus()
				return st.GetState() == api.TaskState_TASK_STATE_FAILED && strings.Contains(st.GetErr(), "unhealthy container"),
					c.ps(t, m, "hc")
			}
		}
		return false, "the sick task is gone from service ps\n" + c.ps(t, m, "hc")
	})
	tasks = c.healthWait(t, m, "hc", map[uint64]api.TaskHealth{1: hStarting, 2: hHealthy})
	if tasks[1].GetId() == sick.GetId() {
		t.Fatalf("slot 1 still has the sick task %s", sick.GetId())
	}
	c.servedBy(t, client, urls, tasks[2])
	if ps := c.ps(t, m, "hc"); !strings.Contains(ps, "unhealthy container: health check exited 1: ") || !strings.Contains(ps, "failing as asked (POST /healthz/fail)") {
		t.Errorf("service ps does not say why the task failed:\n%s", ps)
	}

	// The replacement serves once its check passes.
	c.setHealth(t, tasks[1], "ok")
	tasks = c.healthWait(t, m, "hc", map[uint64]api.TaskHealth{1: hHealthy, 2: hHealthy})
	c.servedBy(t, client, urls, tasks[1], tasks[2])

	c.ctl(t, m, "service", "rm", "hc")

	// An image's HEALTHCHECK applies without a flag, and `service create`
	// returns only once the task has passed it.
	tarball := filepath.Join(t.TempDir(), "echo-health.tar")
	if err := testimage.BuildEcho(t.Context(), tarball, echoHealthRef, testimage.WithHealthcheck(image.Healthcheck{
		Test: []string{"CMD", "/echo", "health"}, Interval: 300 * time.Millisecond, Retries: 2, StartPeriod: time.Minute,
	})); err != nil {
		t.Fatalf("build the echo image with a HEALTHCHECK: %v", err)
	}
	c.ctl(t, m, "image", "load", tarball)
	out := c.ctl(t, m, "service", "create", "--name", "img", "--replicas", "1", "--publish", "8081:80",
		"--env", "ECHO_HEALTHY_AFTER=3s", echoHealthRef)
	if !strings.Contains(out, "health: starting") || !strings.Contains(out, "service img converged") {
		t.Errorf("service create did not wait for the image's health check:\n%s", out)
	}
	img := c.healthWait(t, m, "img", map[uint64]api.TaskHealth{1: hHealthy})
	var imgURLs []string
	for _, url := range urls {
		imgURLs = append(imgURLs, strings.Replace(url, ":8080", ":8081", 1))
	}
	c.servedBy(t, client, imgURLs, img[1])
	c.ctl(t, m, "service", "rm", "img")
}

// echoHealthRef names the echo image with a HEALTHCHECK.
const echoHealthRef = "shoal.test/echo-health:latest"

const (
	hStarting = api.TaskHealth_TASK_HEALTH_STARTING
	hHealthy  = api.TaskHealth_TASK_HEALTH_HEALTHY
)

// healthWait waits until each slot of the service has a current task
// (desired running) that runs with the given health, and returns those
// tasks by slot.
func (c *labCluster) healthWait(t *testing.T, via, service string, want map[uint64]api.TaskHealth) map[uint64]*api.Task {
	t.Helper()
	var current map[uint64]*api.Task
	what := fmt.Sprintf("tasks of %s running with health %v", service, want)
	tc.Eventually(t, clusterConverge, what, func() (bool, string) {
		current = map[uint64]*api.Task{}
		for _, task := range c.tasks(t, via, service) {
			if task.GetDesiredState() != api.TaskState_TASK_STATE_RUNNING {
				continue
			}
			if cur := current[task.GetSlot()]; cur == nil || task.GetRestartCount() > cur.GetRestartCount() {
				current[task.GetSlot()] = task
			}
		}
		for slot, h := range want {
			task := current[slot]
			if task.GetStatus().GetState() != api.TaskState_TASK_STATE_RUNNING || task.GetStatus().GetHealth() != h {
				return false, c.ps(t, via, service)
			}
		}
		return len(current) == len(want), c.ps(t, via, service)
	})
	return current
}

// setHealth makes a task's echo server pass ("ok") or fail ("fail") its
// health check from now on, from inside its container.
func (c *labCluster) setHealth(t *testing.T, task *api.Task, to string) {
	t.Helper()
	node := hostnames(c.clusterNodes(t, c.manager(t)))[task.GetNodeId()]
	var pid uint32
	for _, ctr := range c.containers(t, node) {
		if ctr.TaskID == task.GetId() {
			pid = ctr.PID
		}
	}
	if pid == 0 {
		t.Fatalf("no container of task %s on %s", task.GetId(), node)
	}
	if out, err := inTask(t, pid)("set-health", to); err != nil {
		t.Fatalf("set-health %s in task %s: %v: %s", to, api.TaskName(task), err, out)
	}
}

// servedBy checks that requests through every node are answered, all of
// them, by exactly the given tasks: first until the nodes' load balancers
// have caught up with the change, then once more for every node.
func (c *labCluster) servedBy(t *testing.T, client lab.Client, urls []string, tasks ...*api.Task) {
	t.Helper()
	var want []string
	for _, task := range tasks {
		want = append(want, api.TaskName(task))
	}
	slices.Sort(want)
	tc.Eventually(t, clusterConverge, fmt.Sprintf("requests answered by %v alone", want), func() (bool, string) {
		for _, url := range urls {
			rep := c.loadFrom(t, client, healthRequests, url)
			if rep.Failed != 0 || !slices.Equal(sortedKeys(rep.Tasks), want) {
				return false, fmt.Sprintf("%s: %d answered by %v, %d failed: %v", url, rep.OK, rep.Tasks, rep.Failed, rep.Errors)
			}
		}
		return true, ""
	})
	for _, url := range urls {
		servicecheck.ServedOnlyBy(t, "through "+url, c.loadFrom(t, client, healthRequests, url), healthRequests, want)
	}
}
