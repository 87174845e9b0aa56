package servicecheck

import (
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/testcluster"
)

func task(id, node string, slot uint64, desired, current api.TaskState) *api.Task {
	return &api.Task{Id: id, NodeId: node, Slot: slot, ServiceName: "web", DesiredState: desired, Status: &api.TaskStatus{State: current}}
}

func TestConverged(t *testing.T) {
	const run, shut = api.TaskState_TASK_STATE_RUNNING, api.TaskState_TASK_STATE_SHUTDOWN
	names := map[string]string{"n1": "worker1", "n2": "worker2"}
	tasks := []*api.Task{task("t1", "n1", 1, run, run), task("t2", "n2", 2, run, run), task("t0", "n2", 2, shut, shut)}
	ctr := func(id, status string) testcluster.Container {
		return testcluster.Container{ID: id, TaskID: id, Status: status}
	}
	both := map[string][]testcluster.Container{"worker1": {ctr("t1", "running")}, "worker2": {ctr("t2", "RUNNING")}}
	for _, tc := range []struct {
		name       string
		tasks      []*api.Task
		containers map[string][]testcluster.Container
		want       Want
		why        string // empty: converged
	}{
		{"converged", tasks, both, Want{Replicas: 2}, ""},
		{"too few", tasks, both, Want{Replicas: 3}, "2 running tasks, want 3"},
		{"on a node it must avoid", tasks, both, Want{Replicas: 2, NotOn: []string{"worker2"}}, "task t2 runs on worker2"},
		{"container missing", tasks, map[string][]testcluster.Container{"worker1": {ctr("t1", "running")}}, Want{Replicas: 2}, "1 running containers for 2 running tasks"},
		{"unseen node", tasks, map[string][]testcluster.Container{"worker1": {ctr("t1", "running")}, "worker2": nil}, Want{Replicas: 2, Unseen: []string{"worker2"}}, "1 running containers"},
		{"stopped task's container runs", tasks, map[string][]testcluster.Container{"worker1": {ctr("t1", "running")}, "worker2": {ctr("t2", "running"), ctr("t0", "running")}}, Want{Replicas: 2}, "worker2 runs container t0 of task t0, which is not a running task"},
		{"container on the wrong node", tasks, map[string][]testcluster.Container{"worker1": {ctr("t1", "running"), ctr("t2", "running")}}, Want{Replicas: 2}, "worker1 runs container t2 of task t2, which is assigned to worker2"},
		{"two in a slot", append([]*api.Task{task("t3", "n1", 1, run, run)}, tasks...), both, Want{Replicas: 3}, "slot 1 has two running tasks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			running, why := Converged(tc.tasks, names, tc.containers, tc.want)
			if tc.why == "" {
				if running == nil || len(running) != tc.want.Replicas {
					t.Fatalf("not converged: %s", why)
				}
				return
			}
			if running != nil || !strings.Contains(why, tc.why) {
				t.Errorf("Converged = %v, %q; want not converged because %q", running, why, tc.why)
			}
		})
	}
}
