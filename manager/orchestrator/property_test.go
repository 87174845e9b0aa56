package orchestrator

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// randomCase builds a service (nil one time in ten) and a messy task list:
// duplicates, stale specs, tasks on down, unknown and deleted nodes,
// tasks in slot 0 and above replicas, delayed tasks, long histories.
func randomCase(rng *rand.Rand) (*api.Service, []*api.Task, map[string]*api.Node, Config) {
	nodes := map[string]*api.Node{
		"up1":     {Id: "up1", Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}},
		"up2":     {Id: "up2", Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}},
		"down":    {Id: "down", Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_DOWN}},
		"unknown": {Id: "unknown", Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN}},
	}
	nodeIDs := []string{"up1", "up2", "down", "unknown", "deleted"}

	var svc *api.Service
	if rng.IntN(10) != 0 {
		policy := &api.RestartPolicy{
			Condition:   api.RestartCondition(rng.IntN(4)),
			MaxAttempts: uint64(rng.IntN(4)),
		}
		if rng.IntN(2) == 0 {
			policy.Delay = durationpb.New(time.Duration(rng.IntN(3)) * time.Second)
		}
		svc = newService(uint64(rng.IntN(7)), withRestart(policy), withSpecVersion(uint64(1+rng.IntN(3))), withHistoryLimit(uint32(rng.IntN(4))))
	}

	states := []api.TaskState{
		api.TaskState_TASK_STATE_NEW, api.TaskState_TASK_STATE_PENDING, api.TaskState_TASK_STATE_ASSIGNED,
		api.TaskState_TASK_STATE_ACCEPTED, api.TaskState_TASK_STATE_PREPARING, api.TaskState_TASK_STATE_STARTING,
		api.TaskState_TASK_STATE_RUNNING, api.TaskState_TASK_STATE_COMPLETE, api.TaskState_TASK_STATE_SHUTDOWN,
		api.TaskState_TASK_STATE_FAILED, api.TaskState_TASK_STATE_REJECTED, api.TaskState_TASK_STATE_ORPHANED,
	}
	desiredStates := []api.TaskState{running, running, running, shutdown, shutdown, removeSt}

	n := rng.IntN(25)
	tasks := make([]*api.Task, 0, n)
	for i := range n {
		state := states[rng.IntN(len(states))]
		t := &api.Task{
			Id:          fmt.Sprintf("r%03d", i),
			Meta:        &api.Meta{CreatedAt: timestamppb.New(now.Add(-time.Duration(rng.IntN(3600)) * time.Second))},
			ServiceId:   "svc",
			ServiceName: "web",
			Slot:        uint64(rng.IntN(9)),
			SpecVersion: uint64(1 + rng.IntN(3)),
			Status: &api.TaskStatus{
				State:     state,
				Timestamp: timestamppb.New(now.Add(-time.Duration(rng.IntN(60)) * time.Second)),
			},
			DesiredState: desiredStates[rng.IntN(len(desiredStates))],
			RestartCount: uint64(rng.IntN(5)),
			BackoffStep:  uint32(rng.IntN(5)),
		}
		if state >= assigned || rng.IntN(4) == 0 {
			t.NodeId = nodeIDs[rng.IntN(len(nodeIDs))]
		}
		if rng.IntN(2) == 0 {
			t.Status.StartedAt = timestamppb.New(t.Status.Timestamp.AsTime().Add(-time.Duration(rng.IntN(20)) * time.Second))
		}
		if rng.IntN(4) == 0 {
			t.NotBefore = timestamppb.New(now.Add(time.Duration(rng.IntN(10)-5) * time.Second))
		}
		tasks = append(tasks, t)
	}
	cfg := Config{TaskHistoryLimit: rng.IntN(4), HealthyRun: time.Duration(rng.IntN(20)) * time.Second}
	return svc, tasks, nodes, cfg
}

// TestReconcileIdempotent checks on many random inputs that Reconcile on
// the result of its own plan wants nothing more, and that every plan keeps
// the rules that do not depend on the input being tidy.
func TestReconcileIdempotent(t *testing.T) {
	cases := 10000
	if testing.Short() {
		cases = 1000
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range cases {
		svc, tasks, nodes, cfg := randomCase(rng)
		before := cloneTasks(tasks)

		p := Reconcile(now, cfg, svc, tasks, nodes)
		checkPlan(t, i, svc, tasks, nodes, p)
		for j := range tasks {
			if !proto.Equal(tasks[j], before[j]) {
				t.Fatalf("case %d: input task %s was modified", i, tasks[j].Id)
			}
		}

		after := apply(tasks, p, now)
		if p.Service != nil {
			svc = p.Service
		}
		checkConverged(t, i, svc, after, nodes)
		if p2 := Reconcile(now, cfg, svc, after, nodes); !p2.Empty() {
			t.Fatalf("case %d: not idempotent\nservice: %v\ntasks:\n%s\nfirst plan: %q\nsecond plan: %q",
				i, svc, dumpTasks(tasks), describe(p), describe(p2))
		}
	}
}

// checkPlan checks one plan against its input.
func checkPlan(t *testing.T, i int, svc *api.Service, tasks []*api.Task, nodes map[string]*api.Node, p Plan) {
	t.Helper()
	byID := make(map[string]*api.Task, len(tasks))
	for _, tk := range tasks {
		byID[tk.Id] = tk
	}
	touched := map[string]bool{}
	for _, u := range p.Update {
		orig := byID[u.Id]
		if orig == nil || touched[u.Id] {
			t.Fatalf("case %d: update of unknown or twice-touched task %s", i, u.Id)
		}
		touched[u.Id] = true
		if u.DesiredState == orig.DesiredState {
			t.Fatalf("case %d: update of %s changes nothing", i, u.Id)
		}
		c := proto.Clone(u).(*api.Task)
		c.DesiredState = orig.DesiredState
		if !proto.Equal(c, orig) {
			t.Fatalf("case %d: update of %s changes more than desired_state", i, u.Id)
		}
		if u.DesiredState < orig.DesiredState {
			t.Fatalf("case %d: update of %s moves desired state back from %v to %v", i, u.Id, orig.DesiredState, u.DesiredState)
		}
	}
	for _, r := range p.Remove {
		orig := byID[r.Id]
		if orig == nil || touched[r.Id] {
			t.Fatalf("case %d: remove of unknown or twice-touched task %s", i, r.Id)
		}
		touched[r.Id] = true
		// A task that ended, or that was never assigned (a global task is
		// made with its node), runs nowhere.
		if terminal(orig) || orig.NodeId == "" || orig.Status.GetState() < assigned {
			continue
		}
		// A task that may still run is deleted only when leaving and its
		// node is down or gone.
		n, ok := nodes[orig.NodeId]
		if ok && n.GetStatus().GetState() != api.NodeState_NODE_STATE_DOWN {
			t.Fatalf("case %d: removed task %s may still run on node %s", i, r.Id, orig.NodeId)
		}
	}
	for _, c := range p.Create {
		if svc == nil {
			t.Fatalf("case %d: created a task for a deleted service", i)
		}
		if c.SpecVersion != svc.SpecVersion || c.Slot == 0 || c.DesiredState != running || c.Status.GetState() != newState {
			t.Fatalf("case %d: created task is malformed: %v", i, c)
		}
		if nb := c.NotBefore; nb != nil {
			if !nb.AsTime().After(now) {
				t.Fatalf("case %d: not_before %v not in the future", i, nb.AsTime())
			}
			if p.Wake.IsZero() || p.Wake.After(nb.AsTime()) {
				t.Fatalf("case %d: Wake %v later than a new task's not_before %v", i, p.Wake, nb.AsTime())
			}
		}
	}
	if !p.Wake.IsZero() && !p.Wake.After(now) {
		t.Fatalf("case %d: Wake %v not in the future", i, p.Wake)
	}
}

// checkConverged checks the store after a plan was applied: a deleted
// service's tasks are all leaving; a live service has exactly replicas
// slots in use, each with at most one task desired RUNNING, but for a
// start-first update's pair: an older task that runs and a task of the
// current spec starting next to it.
func checkConverged(t *testing.T, i int, svc *api.Service, tasks []*api.Task, nodes map[string]*api.Node) {
	t.Helper()
	if svc == nil {
		for _, tk := range tasks {
			if tk.DesiredState != removeSt {
				t.Fatalf("case %d: deleted service's task %s is desired %v", i, tk.Id, tk.DesiredState)
			}
		}
		return
	}
	inUse := map[uint64]bool{}
	r := newReconciler(now, Config{}, svc, nodes)
	for slot, rs := range runnableBySlot(tasks) {
		if len(rs) == 2 && r.stale(rs[0]) != r.stale(rs[1]) {
			old, cur := rs[0], rs[1]
			if r.stale(cur) {
				old, cur = cur, old
			}
			if r.up(old) && !r.ended(cur) && !r.up(cur) {
				continue
			}
		}
		if len(rs) > 1 {
			t.Fatalf("case %d: slot %d has %d tasks desired RUNNING", i, slot, len(rs))
		}
	}
	for _, tk := range tasks {
		if tk.DesiredState != removeSt {
			if tk.Slot == 0 {
				t.Fatalf("case %d: task %s in slot 0 not leaving", i, tk.Id)
			}
			inUse[tk.Slot] = true
		}
	}
	if got := uint64(len(inUse)); got != svc.Spec.GetReplicated().GetReplicas() {
		t.Fatalf("case %d: %d slots in use, want %d", i, got, svc.Spec.GetReplicated().GetReplicas())
	}
}

func dumpTasks(tasks []*api.Task) string {
	var s string
	for _, tk := range tasks {
		s += fmt.Sprintf("  %s slot=%d v=%d rc=%d state=%v desired=%v node=%q\n",
			tk.Id, tk.Slot, tk.SpecVersion, tk.RestartCount, tk.Status.GetState(), tk.DesiredState, tk.NodeId)
	}
	return s
}
