package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/lab"
)

// jobSettle is how long a finished job is watched for a task run again:
// the orchestrator acts on a completion within milliseconds, so a
// restart would show well within it.
const jobSettle = 5 * time.Second

// TestPlacementModes is an operator's session with modes, placement and
// resources on a cluster of one manager and two workers: a global service
// on every node, also one that joins later and one back from a drain; a
// job that runs to completion; a memory limit the kernel enforces; a
// service that asks for more memory than any node has.
func TestPlacementModes(t *testing.T) {
	c := newLabCluster(t, 1, 2)
	m := c.manager(t)

	t.Run("a global service runs a task on every node", func(t *testing.T) {
		c.logsOnFailure(t)
		out := c.ctl(t, m, "service", "create", "--name", "agent", "--mode", "global", "--reserve-memory", "64M", "--limit-memory", "128M", tc.Image)
		if !strings.Contains(out, "converged") {
			t.Errorf("service create did not wait for the global service:\n%s", out)
		}
		c.globalOn(t, "agent", c.names(""))
		if ls := c.ctl(t, m, "service", "ls"); !strings.Contains(ls, "global") || !strings.Contains(ls, "3/3") {
			t.Errorf("service ls does not show agent as global 3/3:\n%s", ls)
		}
		pretty := c.ctl(t, m, "node", "inspect", "--pretty", "worker1")
		if !strings.Contains(pretty, "(64MiB reserved)") {
			t.Errorf("node inspect --pretty does not show the agent's reservation:\n%s", pretty)
		}
	})

	t.Run("a node that joins later gets its task", func(t *testing.T) {
		c.logsOnFailure(t)
		ctx, cancel := context.WithTimeout(t.Context(), ctlTimeout)
		defer cancel()
		added, err := c.Add(ctx, lab.AddConfig{Workers: 1, Progress: t.Output()})
		if err != nil {
			t.Fatalf("lab add: %v", err)
		}
		if len(added) != 1 {
			t.Fatalf("lab add made %d nodes", len(added))
		}
		c.globalOn(t, "agent", c.names(""))
	})

	t.Run("a drained node loses its task and gets one back when active", func(t *testing.T) {
		c.logsOnFailure(t)
		c.ctl(t, m, "node", "update", "--availability", "drain", "worker1")
		t.Cleanup(func() { c.try(t, m, "node", "update", "--availability", "active", "worker1") })
		others := slices.DeleteFunc(c.names(""), func(n string) bool { return n == "worker1" })
		c.globalOn(t, "agent", others)
		c.ctl(t, m, "node", "update", "--availability", "active", "worker1")
		c.globalOn(t, "agent", c.names(""))
	})

	t.Run("a replicated job runs to completion and is not run again", func(t *testing.T) {
		c.logsOnFailure(t)
		out := c.ctl(t, m, "service", "create", "--name", "batch", "--mode", "replicated-job", "--replicas", "3", "--max-concurrent", "2",
			"--env", "ECHO_CRASH_AFTER=500ms", "--env", "ECHO_EXIT_CODE=0", tc.Image)
		if !strings.Contains(out, "job progress: 3 out of 3 complete") || !strings.Contains(out, "converged") {
			t.Errorf("service create did not follow the job to its end:\n%s", out)
		}
		before := c.tasks(t, m, "batch")
		time.Sleep(jobSettle)
		after := c.tasks(t, m, "batch")
		if len(after) != 3 || len(before) != 3 {
			t.Fatalf("the job has %d tasks, had %d; want 3, one per completion:\n%s", len(after), len(before), c.ps(t, m, "batch"))
		}
		slots := map[uint64]bool{}
		for _, task := range after {
			if task.GetStatus().GetState() != api.TaskState_TASK_STATE_COMPLETE {
				t.Errorf("task %s is %v, want complete", task.GetId(), task.GetStatus().GetState())
			}
			slots[task.GetSlot()] = true
		}
		if len(slots) != 3 {
			t.Errorf("completions in slots %v, want 1, 2 and 3", slots)
		}
		if ls := c.ctl(t, m, "service", "ls"); !strings.Contains(ls, "0/0 (3/3 completed)") {
			t.Errorf("service ls does not show the job complete:\n%s", ls)
		}
		if ps := c.ctl(t, m, "service", "ps", "batch"); strings.Count(ps, "Complete") != 3 {
			t.Errorf("service ps does not show 3 completed tasks:\n%s", ps)
		}
	})

	t.Run("a memory limit is enforced: the task is OOMKilled", func(t *testing.T) {
		c.logsOnFailure(t)
		c.ctl(t, m, "service", "create", "--detach", "--name", "hog", "--limit-memory", "32M", "--restart-condition", "none",
			"--env", "ECHO_ALLOCATE_MB=128", tc.Image)
		tc.Eventually(t, clusterConverge, "hog's task failed as OOMKilled", func() (bool, string) {
			ps := c.ps(t, m, "hog")
			for _, task := range c.tasks(t, m, "hog") {
				st := task.GetStatus()
				if st.GetState() == api.TaskState_TASK_STATE_FAILED && strings.Contains(st.GetErr(), "OOMKilled") {
					return strings.Contains(ps, "OOMKilled"), ps
				}
			}
			return false, ps
		})
		// Under its limit, the same program runs.
		c.ctl(t, m, "service", "create", "--name", "fits", "--limit-memory", "64M", "--env", "ECHO_ALLOCATE_MB=8", tc.Image)
		c.converged(t, "fits", want{replicas: 1})
	})

	t.Run("a service reserving more memory than any node has stays pending, saying why", func(t *testing.T) {
		c.logsOnFailure(t)
		c.ctl(t, m, "service", "create", "--detach", "--name", "huge", "--reserve-memory", "1000G", tc.Image)
		nodes := len(c.names(""))
		reason := fmt.Sprintf("no suitable node (%d nodes lack memory (the task reserves 1000GiB))", nodes)
		tc.Eventually(t, clusterConverge, "huge pending with the reason", func() (bool, string) {
			ps := c.ctl(t, m, "service", "ps", "huge")
			return strings.Contains(ps, "Pending") && strings.Contains(ps, reason), ps
		})
		for _, task := range c.tasks(t, m, "huge") {
			if task.GetNodeId() != "" {
				t.Errorf("task %s was placed on %s", task.GetId(), task.GetNodeId())
			}
		}
	})
}

// globalOn waits until the global service runs exactly one task on each
// of the nodes named, each with its running container there, and none
// elsewhere.
func (c *labCluster) globalOn(t *testing.T, service string, nodes []string) {
	t.Helper()
	m := c.manager(t)
	tc.Eventually(t, clusterConverge, fmt.Sprintf("%s running on %v", service, nodes), func() (bool, string) {
		names := hostnames(c.clusterNodes(t, m))
		running := map[string][]string{} // node → running tasks
		for _, task := range c.tasks(t, m, service) {
			if task.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && task.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING {
				running[names[task.GetNodeId()]] = append(running[names[task.GetNodeId()]], task.GetId())
			}
		}
		if got := sortedKeys(running); !slices.Equal(got, slices.Sorted(slices.Values(nodes))) {
			return false, fmt.Sprintf("running on %v, want %v\n%s", got, nodes, c.ps(t, m, service))
		}
		for _, n := range nodes {
			if len(running[n]) != 1 {
				return false, fmt.Sprintf("%d tasks running on %s\n%s", len(running[n]), n, c.ps(t, m, service))
			}
			if !slices.ContainsFunc(c.containers(t, n), func(ctr tc.Container) bool {
				return ctr.TaskID == running[n][0] && ctr.Status == "running"
			}) {
				return false, fmt.Sprintf("task %s has no running container on %s", running[n][0], n)
			}
		}
		return true, ""
	})
}
