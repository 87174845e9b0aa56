package manager

import (
	"context"
	"fmt"
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager/store"
)

// TestGlobalServiceFollowsNodes runs a global service through the leader's
// controllers: a node that joins gets a task made for it and assigned, a
// drained node's task is stopped and a new one made when it is active
// again, and a node without the memory the task reserves keeps it pending
// with the reason.
func TestGlobalServiceFollowsNodes(t *testing.T) {
	m := startManager(t)
	setNode(t, m, func(n *api.Node) {
		ready(n)
		n.Description.MemoryBytes = 8 << 30
		n.Description.NanoCpus = 4e9
	})
	s := spec("agent", 0)
	s.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}}
	s.Task.Resources = &api.ResourceRequirements{Reservations: &api.Resources{MemoryBytes: 1 << 30}}
	svc := createService(t, m, s)

	assigned := func(what string, want map[string]int) {
		t.Helper()
		await.For(t, what, func() (bool, string) {
			got := map[string]int{}
			var desc []string
			for _, tk := range tasksOf(m, svc.GetId()) {
				desc = append(desc, fmt.Sprintf("%s on %s: %v desired %v %q", tk.GetId(), tk.GetNodeId(), tk.GetStatus().GetState(), tk.GetDesiredState(), tk.GetStatus().GetErr()))
				if tk.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && tk.GetStatus().GetState() == api.TaskState_TASK_STATE_ASSIGNED {
					got[tk.GetNodeId()]++
				}
			}
			return fmt.Sprint(got) == fmt.Sprint(want), strings.Join(desc, "\n")
		})
	}
	assigned("a task on the one node", map[string]int{selfID: 1})

	// Another node joins, ready, with room; a third with too little memory.
	join := func(id string, memory int64) {
		n := &api.Node{Id: id, Role: api.NodeRole_NODE_ROLE_WORKER,
			Spec:        &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
			Description: &api.NodeDescription{Hostname: id, NanoCpus: 4e9, MemoryBytes: memory},
			Status:      &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}}
		if err := m.State().Propose(context.Background(), store.Create(n)); err != nil {
			t.Fatal(err)
		}
	}
	join("node-2", 8<<30)
	join("node-3", 512<<20)
	assigned("node-2 gets its task", map[string]int{selfID: 1, "node-2": 1})
	await.For(t, "node-3's task pending with the reason", func() (bool, string) {
		for _, tk := range tasksOf(m, svc.GetId()) {
			if tk.GetNodeId() == "node-3" {
				st := tk.GetStatus()
				return st.GetState() == api.TaskState_TASK_STATE_PENDING && st.GetErr() == "no suitable node (1 node lacks memory (the task reserves 1GiB))",
					fmt.Sprintf("%v %q", st.GetState(), st.GetErr())
			}
		}
		return false, "no task for node-3"
	})

	setNode(t, m, func(n *api.Node) {
		n.Spec = &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_DRAIN}
	})
	await.For(t, "the drained node's task told to stop", func() (bool, string) {
		for _, tk := range tasksOf(m, svc.GetId()) {
			if tk.GetNodeId() == selfID && tk.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING {
				return false, "task " + tk.GetId() + " still meant to run"
			}
		}
		return true, ""
	})
	// The node's agent would report the stop; do it for it.
	for _, tk := range tasksOf(m, svc.GetId()) {
		if tk.GetNodeId() == selfID {
			tk.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_SHUTDOWN}
			if err := m.State().Propose(context.Background(), store.Update(tk)); err != nil {
				t.Fatal(err)
			}
		}
	}
	setNode(t, m, func(n *api.Node) {
		n.Spec = &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE}
	})
	assigned("back from drain, the node gets a new task", map[string]int{selfID: 1, "node-2": 1})
}
