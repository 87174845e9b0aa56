package orchestrator

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func globalService(opts ...svcOpt) *api.Service {
	s := newService(0, opts...)
	s.Spec.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}}
	return s
}

func globalJob(opts ...svcOpt) *api.Service {
	s := newService(0, opts...)
	s.Spec.Mode = &api.ServiceSpec_GlobalJob{GlobalJob: &api.GlobalJob{}}
	return s
}

func withConstraints(cs ...string) svcOpt {
	return func(s *api.Service) { s.Spec.Task.Placement = &api.Placement{Constraints: cs} }
}

type nodeOpt func(*api.Node)

func nodeState(st api.NodeState) nodeOpt { return func(n *api.Node) { n.Status.State = st } }
func availability(a api.NodeAvailability) nodeOpt {
	return func(n *api.Node) { n.Spec.Availability = a }
}
func nodeLabel(k, v string) nodeOpt { return func(n *api.Node) { n.Spec.Labels[k] = v } }

var (
	drainedNode = availability(api.NodeAvailability_NODE_AVAILABILITY_DRAIN)
	pausedNode  = availability(api.NodeAvailability_NODE_AVAILABILITY_PAUSE)
	downNode    = nodeState(api.NodeState_NODE_STATE_DOWN)
	unknownNode = nodeState(api.NodeState_NODE_STATE_UNKNOWN)
)

// cluster makes nodes by id, READY and active unless opts say otherwise.
func cluster(nodes map[string][]nodeOpt) map[string]*api.Node {
	out := map[string]*api.Node{}
	for id, opts := range nodes {
		n := &api.Node{
			Id:     id,
			Spec:   &api.NodeSpec{Labels: map[string]string{}, Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
			Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_READY},
		}
		for _, o := range opts {
			if o != nil {
				o(n)
			}
		}
		out[id] = n
	}
	return out
}

// globalTask is a global task (slot 0) on node, assigned once state says so.
func globalTask(node string, state api.TaskState, opts ...taskOpt) *api.Task {
	t := newTask(0, state, opts...)
	t.NodeId = node
	return t
}

func TestReconcileGlobal(t *testing.T) {
	anyPolicy := withRestart(&api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_ANY})
	tests := []struct {
		name  string
		svc   *api.Service
		nodes map[string][]nodeOpt
		tasks []*api.Task
		want  []string
	}{
		{
			name: "one task per ready, active node that meets the constraints",
			svc:  globalService(withConstraints("node.labels.zone==eu")),
			nodes: map[string][]nodeOpt{
				"a": {nodeLabel("zone", "eu")}, "b": {nodeLabel("zone", "eu")},
				"drained": {nodeLabel("zone", "eu"), drainedNode}, "paused": {nodeLabel("zone", "eu"), pausedNode},
				"down": {nodeLabel("zone", "eu"), downNode}, "unknown": {nodeLabel("zone", "eu"), unknownNode},
				"us": {nodeLabel("zone", "us")},
			},
			want: []string{"create slot=0 node=a restarts=0 step=0 delay=0s", "create slot=0 node=b restarts=0 step=0 delay=0s"},
		},
		{
			name:  "steady",
			svc:   globalService(),
			nodes: map[string][]nodeOpt{"a": nil, "b": nil},
			tasks: []*api.Task{globalTask("a", running), globalTask("b", running)},
		},
		{
			name:  "a node that joins gets its task",
			svc:   globalService(),
			nodes: map[string][]nodeOpt{"a": nil, "b": nil, "new": nil},
			tasks: []*api.Task{globalTask("a", running), globalTask("b", running)},
			want:  []string{"create slot=0 node=new restarts=0 step=0 delay=0s"},
		},
		{
			name:  "a drained node's task is stopped, not replaced",
			svc:   globalService(),
			nodes: map[string][]nodeOpt{"a": {drainedNode}, "b": nil},
			tasks: []*api.Task{globalTask("a", running, withID("ta")), globalTask("b", running)},
			want:  []string{"update ta desired=shutdown"},
		},
		{
			name:  "a node back from drain gets a new task, not counted as a restart",
			svc:   globalService(withRestart(&api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_NONE})),
			nodes: map[string][]nodeOpt{"a": nil},
			tasks: []*api.Task{globalTask("a", shutdown, desired(shutdown), restarts(2))},
			want:  []string{"create slot=0 node=a restarts=2 step=0 delay=0s"},
		},
		{
			name:  "back from drain while its old task still stops: wait for it",
			svc:   globalService(),
			nodes: map[string][]nodeOpt{"a": nil},
			tasks: []*api.Task{globalTask("a", running, desired(shutdown))},
		},
		{
			name:  "a node that is down keeps its task: it may still run it",
			svc:   globalService(),
			nodes: map[string][]nodeOpt{"a": {downNode}, "b": {unknownNode}},
			tasks: []*api.Task{globalTask("a", running), globalTask("b", running)},
		},
		{
			name:  "a removed node's tasks go",
			svc:   globalService(),
			nodes: map[string][]nodeOpt{"b": nil},
			tasks: []*api.Task{globalTask("gone", running, withID("tg")), globalTask("b", running)},
			want:  []string{"remove tg"},
		},
		{
			name:  "a node that no longer meets the constraints loses its task",
			svc:   globalService(withConstraints("node.labels.zone==eu")),
			nodes: map[string][]nodeOpt{"a": {nodeLabel("zone", "us")}},
			tasks: []*api.Task{globalTask("a", running, withID("ta"))},
			want:  []string{"update ta desired=shutdown"},
		},
		{
			name:  "a failed task is restarted on its node with the back-off",
			svc:   globalService(anyPolicy),
			nodes: map[string][]nodeOpt{"a": nil},
			tasks: []*api.Task{globalTask("a", failed, withID("ta"), ranFor(time.Second))},
			want:  []string{"create slot=0 node=a restarts=1 step=1 delay=100ms", "update ta desired=shutdown"},
		},
		{
			name:  "a paused node keeps its task but gets no new one",
			svc:   globalService(anyPolicy),
			nodes: map[string][]nodeOpt{"p": {pausedNode}, "q": {pausedNode}},
			tasks: []*api.Task{globalTask("p", running), globalTask("q", failed, withID("tq"))},
			want:  []string{"update tq desired=shutdown"},
		},
		{
			name:  "an updated spec replaces the task where the node may start one",
			svc:   globalService(withSpecVersion(2)),
			nodes: map[string][]nodeOpt{"a": nil, "p": {pausedNode}, "d": {downNode}},
			tasks: []*api.Task{globalTask("a", running, withID("ta")), globalTask("p", running), globalTask("d", running)},
			want:  []string{"create slot=0 node=a restarts=0 step=0 delay=0s", "update ta desired=shutdown"},
		},
		{
			name:  "a task never assigned to a drained node is deleted",
			svc:   globalService(),
			nodes: map[string][]nodeOpt{"a": {drainedNode}},
			tasks: []*api.Task{globalTask("a", pending, withID("ta"))},
			want:  []string{"remove ta"},
		},
		{
			name:  "tasks that are not a global service's are retired",
			svc:   globalService(),
			nodes: map[string][]nodeOpt{"a": nil},
			tasks: []*api.Task{globalTask("a", running), newTask(3, running, withID("t3"), onNode("a"))},
			want:  []string{"update t3 desired=remove"},
		},
		{
			name:  "global job: a completed task is the node's last word, a failed one is restarted",
			svc:   globalJob(withRestart(&api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_ON_FAILURE})),
			nodes: map[string][]nodeOpt{"a": nil, "b": nil, "new": nil},
			tasks: []*api.Task{
				globalTask("a", complete, withID("ta"), desired(shutdown)),
				globalTask("b", failed, withID("tb"), neverStarted()),
			},
			want: []string{
				"create slot=0 node=b restarts=1 step=1 delay=100ms",
				"create slot=0 node=new restarts=0 step=0 delay=0s",
				"update tb desired=shutdown",
			},
		},
		{
			name:  "global job: a completed task still desired running is retired to history",
			svc:   globalJob(anyPolicy),
			nodes: map[string][]nodeOpt{"a": nil},
			tasks: []*api.Task{globalTask("a", complete, withID("ta"))},
			want:  []string{"update ta desired=shutdown"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := cluster(tt.nodes)
			p := Reconcile(now, Config{}, tt.svc, tt.tasks, nodes)
			if got := describe(p); !slices.Equal(got, tt.want) {
				t.Fatalf("plan\n got %q\nwant %q", got, tt.want)
			}
			for _, c := range p.Create {
				if c.NodeId == "" || c.Slot != 0 || c.Status.GetState() != newState {
					t.Errorf("created %v: want slot 0, NEW, made for its node", c)
				}
			}
			after := apply(tt.tasks, p, now)
			if p2 := Reconcile(now, Config{}, tt.svc, after, nodes); !p2.Empty() {
				t.Fatalf("not idempotent: second plan %q", describe(p2))
			}
		})
	}
}

// TestGlobalFollowsNodes walks one global service through a node's life:
// it joins, is drained, comes back, goes down and returns, is removed;
// each step the store is made to look as the workers would make it.
func TestGlobalFollowsNodes(t *testing.T) {
	svc := globalService()
	nodes := cluster(map[string][]nodeOpt{"a": nil})
	var tasks []*api.Task
	step := func(what string, want int) {
		t.Helper()
		for range 3 { // workers report, the orchestrator acts again
			p := Reconcile(now, Config{}, svc, tasks, nodes)
			tasks = apply(tasks, p, now)
			tasks = workersAct(tasks, nodes)
		}
		got := 0
		for _, tk := range tasks {
			if tk.DesiredState == running && tk.Status.GetState() == running {
				if n := nodes[tk.NodeId]; n == nil || !startsTasks(n) {
					t.Fatalf("%s: task %s runs on %s, which cannot take it", what, tk.Id, tk.NodeId)
				}
				got++
			}
		}
		if got != want {
			t.Fatalf("%s: %d running tasks, want %d\n%s", what, got, want, dumpTasks(tasks))
		}
	}
	step("one node", 1)
	nodes["b"] = cluster(map[string][]nodeOpt{"b": nil})["b"]
	step("a node joins", 2)
	drainedNode(nodes["b"])
	step("b drained", 1)
	nodes["b"].Spec.Availability = api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	step("b back from drain", 2)
	downNode(nodes["b"])
	step("b down: its task waits (it is not counted running here)", 1)
	nodes["b"].Status.State = api.NodeState_NODE_STATE_READY
	step("b back up", 2)
	delete(nodes, "b")
	step("b removed", 1)
	for _, tk := range tasks {
		if tk.NodeId == "b" {
			t.Fatalf("task %s of removed node b left: %v", tk.Id, tk)
		}
	}
}

// workersAct does what the scheduler and the workers would: assign and
// run what they are given on a node that can take it, stop what is told
// to stop on a node that is up.
func workersAct(tasks []*api.Task, nodes map[string]*api.Node) []*api.Task {
	var out []*api.Task
	for _, t := range tasks {
		t = proto.Clone(t).(*api.Task)
		n := nodes[t.NodeId]
		up := n != nil && n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY
		switch {
		case !up:
			// Nobody reports. A down node's running task does not count
			// as running for the test.
			if t.Status.State == running {
				t.Status.State = api.TaskState_TASK_STATE_STARTING
			}
		case t.DesiredState == running && t.Status.State < running && startsTasks(n):
			t.Status.State = running
			t.Status.StartedAt = timestamppb.New(now)
		case t.DesiredState == running && t.Status.State == api.TaskState_TASK_STATE_STARTING:
			t.Status.State = running
		case t.DesiredState > running && !terminal(t) && dispatched(t):
			t.Status.State = shutdown
		}
		out = append(out, t)
	}
	return out
}

// TestReconcileGlobalIdempotent checks on random inputs that the plan for
// a global service leaves at most one task meant to run per node, none on
// a node that may not keep one, and that a second Reconcile wants nothing.
func TestReconcileGlobalIdempotent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 3000 {
		_, tasks, _, cfg := randomCase(rng)
		svc := globalService(withSpecVersion(uint64(1 + rng.IntN(3))))
		if rng.IntN(3) == 0 {
			svc = globalJob(withSpecVersion(uint64(1 + rng.IntN(3))))
		}
		opts := []nodeOpt{nil, drainedNode, pausedNode, downNode, unknownNode}
		spec := map[string][]nodeOpt{}
		for _, id := range []string{"up1", "up2", "down", "unknown"} {
			spec[id] = []nodeOpt{opts[rng.IntN(len(opts))]}
		}
		nodes := cluster(spec)
		for _, tk := range tasks {
			if rng.IntN(4) != 0 {
				tk.Slot = 0
			}
		}
		p := Reconcile(now, cfg, svc, tasks, nodes)
		after := apply(tasks, p, now)
		perNode := map[string]int{}
		for _, tk := range after {
			if tk.DesiredState != running {
				continue
			}
			if tk.Slot != 0 || tk.NodeId == "" {
				t.Fatalf("case %d: task %s slot %d node %q meant to run", i, tk.Id, tk.Slot, tk.NodeId)
			}
			n := nodes[tk.NodeId]
			if n == nil || n.Spec.Availability == api.NodeAvailability_NODE_AVAILABILITY_DRAIN {
				t.Fatalf("case %d: task %s meant to run on %s, which may not keep it", i, tk.Id, tk.NodeId)
			}
			if perNode[tk.NodeId]++; perNode[tk.NodeId] > 1 {
				t.Fatalf("case %d: two tasks meant to run on %s\n%s", i, tk.NodeId, dumpTasks(after))
			}
		}
		if p2 := Reconcile(now, cfg, svc, after, nodes); !p2.Empty() {
			t.Fatalf("case %d: not idempotent\ntasks:\n%s\nfirst plan: %q\nsecond plan: %q", i, dumpTasks(tasks), describe(p), describe(p2))
		}
	}
}
