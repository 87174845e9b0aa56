package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

type nodeOpt func(*api.Node)

func down(n *api.Node)   { n.Status.State = api.NodeState_NODE_STATE_DOWN }
func paused(n *api.Node) { n.Spec.Availability = api.NodeAvailability_NODE_AVAILABILITY_PAUSE }
func drained(n *api.Node) {
	n.Spec.Availability = api.NodeAvailability_NODE_AVAILABILITY_DRAIN
}
func label(k, v string) nodeOpt { return func(n *api.Node) { n.Spec.Labels[k] = v } }
func manager(n *api.Node)       { n.Role = api.NodeRole_NODE_ROLE_MANAGER }

func node(id string, opts ...nodeOpt) *api.Node {
	n := &api.Node{
		Id:          id,
		Role:        api.NodeRole_NODE_ROLE_WORKER,
		Spec:        &api.NodeSpec{Labels: map[string]string{}, Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
		Description: &api.NodeDescription{Hostname: "host-" + id, Os: "linux", Arch: "amd64"},
		Status:      &api.NodeStatus{State: api.NodeState_NODE_STATE_READY},
	}
	for _, o := range opts {
		o(n)
	}
	return n
}

func pendingTask(id, service string, constraints ...string) *api.Task {
	return &api.Task{
		Id:           id,
		ServiceId:    service,
		Spec:         &api.TaskSpec{Placement: &api.Placement{Constraints: constraints}},
		Status:       &api.TaskStatus{State: api.TaskState_TASK_STATE_PENDING},
		DesiredState: api.TaskState_TASK_STATE_RUNNING,
	}
}

func runningTask(id, service, nodeID string) *api.Task {
	t := pendingTask(id, service)
	t.NodeId = nodeID
	t.Status.State = api.TaskState_TASK_STATE_RUNNING
	return t
}

func tasks(service string, n int, constraints ...string) []*api.Task {
	var ts []*api.Task
	for i := range n {
		ts = append(ts, pendingTask(fmt.Sprintf("%s.%d", service, i+1), service, constraints...))
	}
	return ts
}

// perNode counts placed decisions by node ID, "" collecting the unplaced.
func perNode(ds []Decision) map[string]int {
	m := map[string]int{}
	for _, d := range ds {
		m[d.NodeID]++
	}
	return m
}

func TestScheduleSpread(t *testing.T) {
	three := []*api.Node{node("n1"), node("n2"), node("n3")}
	tests := []struct {
		name    string
		nodes   []*api.Node
		running []*api.Task
		pending []*api.Task
		want    map[string]int
	}{
		{
			name:    "6 replicas over 3 nodes",
			nodes:   three,
			pending: tasks("web", 6),
			want:    map[string]int{"n1": 2, "n2": 2, "n3": 2},
		},
		{
			name:    "7 replicas: the extra one goes to the lowest node ID",
			nodes:   three,
			pending: tasks("web", 7),
			want:    map[string]int{"n1": 3, "n2": 2, "n3": 2},
		},
		{
			name:  "a second service spreads by its own count before total load",
			nodes: three,
			running: []*api.Task{
				runningTask("a1", "a", "n1"), runningTask("a2", "a", "n1"), runningTask("a3", "a", "n2"),
			},
			pending: tasks("b", 3),
			want:    map[string]int{"n1": 1, "n2": 1, "n3": 1},
		},
		{
			name:  "with equal service counts the least loaded node wins",
			nodes: three,
			running: []*api.Task{
				runningTask("a1", "a", "n1"), runningTask("a2", "a", "n1"), runningTask("a3", "a", "n2"),
			},
			pending: tasks("b", 1),
			want:    map[string]int{"n3": 1},
		},
		{
			name:  "replicas fill the nodes that have fewest of the service",
			nodes: three,
			running: []*api.Task{
				runningTask("w1", "web", "n1"), runningTask("w2", "web", "n1"), runningTask("w3", "web", "n2"),
			},
			pending: tasks("web", 3),
			want:    map[string]int{"n2": 1, "n3": 2},
		},
		{
			name:    "drained, paused and down nodes get nothing",
			nodes:   []*api.Node{node("n1", drained), node("n2", paused), node("n3", down), node("n4")},
			pending: tasks("web", 5),
			want:    map[string]int{"n4": 5},
		},
		{
			name:    "constraints narrow the candidates",
			nodes:   []*api.Node{node("n1", label("zone", "eu")), node("n2", label("zone", "us")), node("n3", label("zone", "eu"), manager)},
			pending: append(tasks("eu", 4, "node.labels.zone==eu"), tasks("mgr", 2, "node.role == manager")...),
			want:    map[string]int{"n1": 2, "n3": 4},
		},
		{
			name:  "tasks that are not pending are skipped",
			nodes: three,
			pending: func() []*api.Task {
				ts := tasks("web", 2)
				ts = append(ts, runningTask("r", "web", "n1"))
				shut := pendingTask("s", "web")
				shut.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN
				fresh := pendingTask("f", "web")
				fresh.Status.State = api.TaskState_TASK_STATE_NEW
				return append(ts, shut, fresh, nil)
			}(),
			want: map[string]int{"n1": 1, "n2": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New()
			s.Sync(tt.nodes, tt.running)
			got := perNode(s.Schedule(tt.pending))
			if !mapsEqual(got, tt.want) {
				t.Errorf("placements = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestScheduleExplanation(t *testing.T) {
	tests := []struct {
		name        string
		nodes       []*api.Node
		constraints []string
		want        string
	}{
		{
			name:        "counts per reason, each node charged to its first failing filter",
			nodes:       []*api.Node{node("n1", drained), node("n2", paused, label("zone", "eu")), node("n3", label("zone", "us")), node("n4", down, label("zone", "us"))},
			constraints: []string{"node.labels.zone==eu"},
			want:        "no suitable node (1 node is not ready; 2 nodes are not available for new tasks (paused or drained); 1 node does not satisfy constraint node.labels.zone==eu)",
		},
		{
			name:        "each constraint counted on its own",
			nodes:       []*api.Node{node("n1", label("zone", "eu")), node("n2", label("zone", "us")), node("n3", label("zone", "us"), manager)},
			constraints: []string{"node.role==manager", "node.labels.zone == eu"},
			want:        "no suitable node (2 nodes do not satisfy constraint node.role==manager; 1 node does not satisfy constraint node.labels.zone==eu)",
		},
		{
			name:  "all down",
			nodes: []*api.Node{node("n1", down), node("n2", down)},
			want:  "no suitable node (2 nodes are not ready)",
		},
		{
			name: "no nodes",
			want: "no suitable node (the cluster has no nodes)",
		},
		{
			name:        "invalid constraint",
			nodes:       []*api.Node{node("n1")},
			constraints: []string{"node.zone==eu"},
			want:        `invalid placement: constraint "node.zone==eu": unknown key node.zone; use node.id, node.hostname, node.role, node.labels.KEY, node.platform.os or node.platform.arch`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New()
			s.Sync(tt.nodes, nil)
			ds := s.Schedule(tasks("web", 2, tt.constraints...))
			if len(ds) != 2 {
				t.Fatalf("got %d decisions, want 2", len(ds))
			}
			for _, d := range ds {
				if d.NodeID != "" {
					t.Errorf("task %s placed on %s, want unplaced", d.Task.GetId(), d.NodeID)
				}
				if d.Explanation != tt.want {
					t.Errorf("explanation\n got %q\nwant %q", d.Explanation, tt.want)
				}
			}
		})
	}
}

func TestSchedulePlacedHaveNoExplanation(t *testing.T) {
	s := New()
	s.Sync([]*api.Node{node("n1"), node("n2", down)}, nil)
	for _, d := range s.Schedule(tasks("web", 3)) {
		if d.NodeID != "n1" || d.Explanation != "" {
			t.Errorf("decision for %s = (%q, %q), want (n1, no explanation)", d.Task.GetId(), d.NodeID, d.Explanation)
		}
	}
}

func TestScheduleDeterministic(t *testing.T) {
	var nodes []*api.Node
	for i := range 20 {
		opts := []nodeOpt{label("zone", []string{"eu", "us"}[i%2])}
		if i%7 == 3 {
			opts = append(opts, drained)
		}
		nodes = append(nodes, node(fmt.Sprintf("node-%02d", i), opts...))
	}
	var pending []*api.Task
	pending = append(pending, tasks("a", 13)...)
	pending = append(pending, tasks("b", 9, "node.labels.zone==eu")...)
	pending = append(pending, tasks("c", 30)...)

	run := func(nodes []*api.Node) []string {
		s := New()
		s.Sync(nodes, nil)
		var out []string
		for _, d := range s.Schedule(pending) {
			out = append(out, d.Task.GetId()+"→"+d.NodeID)
		}
		return out
	}
	want := run(nodes)
	for i := range 5 {
		shuffled := slices.Clone(nodes)
		rand.New(rand.NewPCG(uint64(i), 0)).Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		if got := run(shuffled); !slices.Equal(got, want) {
			t.Fatalf("node order %d changed the decisions:\n got %v\nwant %v", i, got, want)
		}
	}
}

// TestScheduleCountsAsCommitted follows one task through the life the
// manager gives it: placed, echoed back by the store, then gone.
func TestScheduleCountsAsCommitted(t *testing.T) {
	s := New()
	s.Sync([]*api.Node{node("n1"), node("n2")}, nil)

	first := s.Schedule(tasks("web", 1))
	if first[0].NodeID != "n1" {
		t.Fatalf("first task on %q, want n1", first[0].NodeID)
	}
	// The store's echo of the committed decision must not count it twice.
	committed := runningTask(first[0].Task.GetId(), "web", "n1")
	committed.Status.State = api.TaskState_TASK_STATE_ASSIGNED
	s.TaskAssigned(committed)
	s.TaskAssigned(committed)

	next := s.Schedule([]*api.Task{pendingTask("web.2", "web")})
	if next[0].NodeID != "n2" {
		t.Fatalf("second task on %q, want n2 (n1 already has one)", next[0].NodeID)
	}
	// web.2's decision was not committed: forgetting it frees n2 again.
	s.TaskGone(next[0].Task)
	s.TaskGone(committed)
	if got := s.Schedule([]*api.Task{pendingTask("web.3", "web")}); got[0].NodeID != "n1" {
		t.Fatalf("after both tasks went, task on %q, want n1", got[0].NodeID)
	}
}

func TestTaskAssignedTracksMovesAndEnds(t *testing.T) {
	s := New()
	s.Sync([]*api.Node{node("n1"), node("n2"), node("n3")}, nil)
	t1 := runningTask("t1", "web", "n1")
	s.TaskAssigned(t1)
	t1moved := runningTask("t1", "web", "n2")
	s.TaskAssigned(t1moved)
	if got := s.Schedule(tasks("web", 2)); got[0].NodeID != "n1" || got[1].NodeID != "n3" {
		t.Fatalf("after the move, placed on %s and %s, want n1 and n3", got[0].NodeID, got[1].NodeID)
	}

	s = New()
	s.Sync([]*api.Node{node("n1"), node("n2")}, nil)
	s.TaskAssigned(runningTask("t1", "web", "n1"))
	ended := runningTask("t1", "web", "n1")
	ended.Status.State = api.TaskState_TASK_STATE_FAILED
	s.TaskAssigned(ended)
	if got := s.Schedule(tasks("web", 1)); got[0].NodeID != "n1" {
		t.Fatalf("after the task failed, placed on %s, want n1", got[0].NodeID)
	}
}

func TestSyncCountsOnlyOccupyingTasks(t *testing.T) {
	done := runningTask("done", "web", "n1")
	done.Status.State = api.TaskState_TASK_STATE_COMPLETE
	stopping := runningTask("stopping", "web", "n1")
	stopping.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN
	unplaced := pendingTask("unplaced", "web")
	assigned := runningTask("assigned", "web", "n2")
	assigned.Status.State = api.TaskState_TASK_STATE_ASSIGNED

	s := New()
	s.Sync([]*api.Node{node("n1"), node("n2")}, []*api.Task{done, stopping, unplaced, assigned})
	if got := s.Schedule(tasks("web", 1)); got[0].NodeID != "n1" {
		t.Fatalf("placed on %s, want n1: only the assigned task on n2 occupies a node", got[0].NodeID)
	}
}

// TestTaskPredicates pins which tasks count against a node and which wait
// for one, for every state a task can be in and the desired states that
// matter.
func TestTaskPredicates(t *testing.T) {
	task := func(node string, desired, state api.TaskState) *api.Task {
		return &api.Task{Id: "t", NodeId: node, DesiredState: desired, Status: &api.TaskStatus{State: state}}
	}
	const (
		running  = api.TaskState_TASK_STATE_RUNNING
		shutdown = api.TaskState_TASK_STATE_SHUTDOWN
		remove   = api.TaskState_TASK_STATE_REMOVE
	)
	for st := range api.TaskState_name {
		state := api.TaskState(st)
		if state == remove { // a desired state only
			continue
		}
		ended := map[api.TaskState]bool{api.TaskState_TASK_STATE_COMPLETE: true, api.TaskState_TASK_STATE_SHUTDOWN: true,
			api.TaskState_TASK_STATE_FAILED: true, api.TaskState_TASK_STATE_REJECTED: true, api.TaskState_TASK_STATE_ORPHANED: true}[state]
		// A task made for its node (a global task) counts once assigned.
		wantOccupies := !ended && state >= api.TaskState_TASK_STATE_ASSIGNED
		if got := Occupies(task("n1", running, state)); got != wantOccupies {
			t.Errorf("Occupies(on n1, desired running, %v) = %v, want %v", state, got, wantOccupies)
		}
		for _, desired := range []api.TaskState{shutdown, remove} {
			if Occupies(task("n1", desired, state)) {
				t.Errorf("Occupies(on n1, desired %v, %v) = true: a task told to stop does not count", desired, state)
			}
		}
		if Occupies(task("", running, state)) {
			t.Errorf("Occupies(no node, %v) = true", state)
		}
		wantPending := state == api.TaskState_TASK_STATE_PENDING
		if got := Schedulable(task("", running, state)); got != wantPending {
			t.Errorf("Schedulable(no node, desired running, %v) = %v, want %v", state, got, wantPending)
		}
		if got := Schedulable(task("n1", running, state)); got != wantPending {
			t.Errorf("Schedulable(made for n1, desired running, %v) = %v, want %v", state, got, wantPending)
		}
		if got := Pinned(task("n1", running, state)); got != (state < api.TaskState_TASK_STATE_ASSIGNED) {
			t.Errorf("Pinned(made for n1, %v) = %v", state, got)
		}
		if Schedulable(task("", shutdown, state)) {
			t.Errorf("Schedulable(%v) true for a task told to stop", state)
		}
	}
}

func TestNodeUpdates(t *testing.T) {
	s := New()
	s.Sync([]*api.Node{node("n1"), node("n2")}, nil)

	// A task on a node the scheduler has not seen yet is counted once the
	// node arrives.
	s.TaskAssigned(runningTask("early", "web", "n3"))
	s.UpsertNode(node("n3"))
	s.RemoveNode("n1")
	got := perNode(s.Schedule(tasks("web", 3)))
	if want := map[string]int{"n2": 2, "n3": 1}; !mapsEqual(got, want) {
		t.Fatalf("placements = %v, want %v", got, want)
	}

	// Updating a node in place changes what the filters see.
	s.UpsertNode(node("n2", drained))
	got = perNode(s.Schedule([]*api.Task{pendingTask("x", "other")}))
	if want := map[string]int{"n3": 1}; !mapsEqual(got, want) {
		t.Fatalf("after draining n2, placements = %v, want %v", got, want)
	}

	// A node that returns keeps the tasks still recorded on it.
	s.TaskAssigned(runningTask("back", "third", "n1"))
	s.RemoveNode("n1")
	s.UpsertNode(node("n1"))
	got = perNode(s.Schedule([]*api.Task{pendingTask("y", "third")}))
	if want := map[string]int{"n3": 1}; !mapsEqual(got, want) {
		t.Fatalf("after n1 came back, placements = %v, want %v", got, want)
	}
}

func TestScheduleSharesCountsAcrossConstraintSets(t *testing.T) {
	// Mid rolling update one service has tasks with two specs; spread is
	// still per service.
	s := New()
	s.Sync([]*api.Node{node("n1", label("zone", "eu")), node("n2", label("zone", "eu")), node("n3", label("zone", "us"))}, nil)
	pending := append(tasks("web", 2), pendingTask("web.new", "web", "node.labels.zone==eu"))
	ds := s.Schedule(pending)
	got := map[string]string{}
	for _, d := range ds {
		got[d.Task.GetId()] = d.NodeID
	}
	want := map[string]string{"web.1": "n1", "web.2": "n2", "web.new": "n1"}
	if !mapsEqual(got, want) {
		t.Fatalf("placements = %v, want %v", got, want)
	}
}

func TestScheduleDuplicateTask(t *testing.T) {
	s := New()
	s.Sync([]*api.Node{node("n1"), node("n2")}, nil)
	t1 := pendingTask("t1", "web")
	ds := s.Schedule([]*api.Task{t1, t1})
	if len(ds) != 1 || ds[0].NodeID != "n1" {
		t.Fatalf("decisions = %+v, want one, on n1", ds)
	}
	if got := s.Schedule(tasks("web", 1)); got[0].NodeID != "n2" {
		t.Fatalf("next task on %s, want n2: the duplicate was counted twice or the first not at all", got[0].NodeID)
	}
}

func TestScheduleUnplacedLeavesNoTrace(t *testing.T) {
	s := New()
	s.Sync([]*api.Node{node("n1", down)}, nil)
	ds := s.Schedule(tasks("web", 3))
	if n := perNode(ds)[""]; n != 3 {
		t.Fatalf("%d unplaced, want 3", n)
	}
	// Forgetting tasks that were never placed must be harmless.
	for _, d := range ds {
		s.TaskGone(d.Task)
	}
	s.UpsertNode(node("n1"))
	s.UpsertNode(node("n2"))
	if got := perNode(s.Schedule(tasks("web", 2))); !mapsEqual(got, map[string]int{"n1": 1, "n2": 1}) {
		t.Fatalf("placements = %v, want one each on n1 and n2", got)
	}
}

// TestScheduleMatchesReference compares the heap-based placement with the
// rule written out the slow way, on random clusters.
func TestScheduleMatchesReference(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		var nodes []*api.Node
		for i := range 1 + rng.IntN(40) {
			var opts []nodeOpt
			opts = append(opts, label("zone", []string{"eu", "us", "ap"}[rng.IntN(3)]))
			switch rng.IntN(8) {
			case 0:
				opts = append(opts, down)
			case 1:
				opts = append(opts, drained)
			}
			nodes = append(nodes, node(fmt.Sprintf("n%03d", rng.IntN(1000))+fmt.Sprint(i), opts...))
		}
		// Few services make large groups (the heap), many make small ones (the scan).
		services := 1 + rng.IntN(80)
		var running []*api.Task
		for i := range rng.IntN(200) {
			running = append(running, runningTask(fmt.Sprintf("r%d", i), fmt.Sprintf("s%d", rng.IntN(services)), nodes[rng.IntN(len(nodes))].Id))
		}
		var pending []*api.Task
		for i := range rng.IntN(300) {
			var cs []string
			if rng.IntN(3) == 0 {
				cs = []string{"node.labels.zone!=" + []string{"eu", "us", "ap"}[rng.IntN(3)]}
			}
			pending = append(pending, pendingTask(fmt.Sprintf("p%d", i), fmt.Sprintf("s%d", rng.IntN(services)), cs...))
		}

		s := New()
		s.Sync(nodes, running)
		got := s.Schedule(pending)
		want := referenceSchedule(nodes, running, pending)
		for i := range want {
			if got[i].NodeID != want[i] {
				t.Fatalf("seed %d: task %s on %q, reference says %q", seed, got[i].Task.Id, got[i].NodeID, want[i])
			}
		}
	}
}

// referenceSchedule places tasks one at a time by scanning every node, in
// the order Schedule promises: groups of (service, constraints) by first
// appearance, tasks within a group in input order.
func referenceSchedule(nodes []*api.Node, running, pending []*api.Task) []string {
	total := map[string]int{}
	svc := map[string]int{}
	for _, t := range running {
		total[t.NodeId]++
		svc[t.ServiceId+"/"+t.NodeId]++
	}
	sorted := slices.Clone(nodes)
	slices.SortFunc(sorted, func(a, b *api.Node) int { return strings.Compare(a.Id, b.Id) })
	groupOf := func(t *api.Task) string { return t.ServiceId + "|" + strings.Join(t.Spec.Placement.Constraints, "|") }
	var order []string
	for _, t := range pending {
		if !slices.Contains(order, groupOf(t)) {
			order = append(order, groupOf(t))
		}
	}
	out := make([]string, len(pending))
	for _, g := range order {
		for i, t := range pending {
			if groupOf(t) != g {
				continue
			}
			cs, _ := ParseConstraints(t.Spec.Placement.Constraints)
			best := ""
			for _, n := range sorted {
				ok := ReadyFilter{}.Check(t, n) && AvailabilityFilter{}.Check(t, n)
				for _, c := range cs {
					ok = ok && c.Matches(n)
				}
				if !ok {
					continue
				}
				k := t.ServiceId + "/"
				if best == "" || svc[k+n.Id] < svc[k+best] || (svc[k+n.Id] == svc[k+best] && total[n.Id] < total[best]) {
					best = n.Id
				}
			}
			out[i] = best
			if best != "" {
				total[best]++
				svc[t.ServiceId+"/"+best]++
			}
		}
	}
	return out
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// wireguard gives a node a WireGuard public key, as a node whose kernel
// has WireGuard reports.
func wireguard(n *api.Node) { n.Description.WireguardKey = slices.Repeat([]byte{7}, 32) }

// on attaches a task to networks.
func on(t *api.Task, networks ...string) *api.Task {
	for _, id := range networks {
		t.Networks = append(t.Networks, &api.NetworkAttachment{NetworkId: id})
	}
	return t
}

func TestScheduleEncryptedNetworks(t *testing.T) {
	const wgOnly = "no suitable node (1 node lacks WireGuard (the task is on an encrypted network))"
	networks := []*api.Network{
		{Id: "secure", Spec: &api.NetworkSpec{Name: "secure", Encrypted: true}},
		{Id: "plain", Spec: &api.NetworkSpec{Name: "plain"}},
	}
	mixed := []*api.Node{node("n1", wireguard), node("n2"), node("n3", wireguard, drained), node("n4", down)}
	tests := []struct {
		name     string
		nodes    []*api.Node
		networks []*api.Network // nil: SyncNetworks is not called
		pending  []*api.Task
		// want is each task's node, or its explanation when unplaced.
		want []string
	}{
		{
			name: "encrypted tasks only where WireGuard is", nodes: mixed, networks: networks,
			pending: []*api.Task{on(pendingTask("a", "web"), "secure"), on(pendingTask("b", "web"), "plain", "secure"), on(pendingTask("c", "web"), "secure")},
			want:    []string{"n1", "n1", "n1"},
		},
		{
			name: "plain tasks anywhere", nodes: mixed, networks: networks,
			pending: []*api.Task{on(pendingTask("a", "web"), "plain"), on(pendingTask("b", "web"), "plain"), pendingTask("c", "web")},
			want:    []string{"n1", "n2", "n1"},
		},
		{
			// One service, one constraint list: only the network tells the
			// tasks apart, so they must not share one group or candidate list.
			name: "a service's plain and encrypted tasks are filtered apart", nodes: mixed, networks: networks,
			pending: []*api.Task{on(pendingTask("a", "web"), "plain"), on(pendingTask("c", "web"), "secure"), on(pendingTask("b", "web"), "plain")},
			want:    []string{"n1", "n1", "n2"},
		},
		{
			name: "an encrypted service after a plain one with the same constraints", nodes: mixed, networks: networks,
			pending: []*api.Task{on(pendingTask("a", "api", "node.role==worker"), "plain"), on(pendingTask("b", "api", "node.role==worker"), "plain"), on(pendingTask("c", "web", "node.role==worker"), "secure"), on(pendingTask("d", "web", "node.role==worker"), "secure")},
			want:    []string{"n1", "n2", "n1", "n1"},
		},
		{
			name: "no node with WireGuard", nodes: []*api.Node{node("n1"), node("n2"), node("n3", down)}, networks: networks,
			pending: []*api.Task{on(pendingTask("a", "web"), "secure")},
			want:    []string{"no suitable node (1 node is not ready; 2 nodes lack WireGuard (the task is on an encrypted network))"},
		},
		{
			name: "constraints are checked after WireGuard", nodes: []*api.Node{node("n1", label("zone", "us")), node("n2", wireguard, label("zone", "us"))}, networks: networks,
			pending: []*api.Task{on(pendingTask("a", "web", "node.labels.zone==eu"), "secure")},
			want:    []string{"no suitable node (1 node lacks WireGuard (the task is on an encrypted network); 1 node does not satisfy constraint node.labels.zone==eu)"},
		},
		{
			name: "with limits", nodes: mixed, networks: networks,
			pending: []*api.Task{maxPerNode(on(pendingTask("a", "web"), "secure"), 1), maxPerNode(on(pendingTask("b", "web"), "secure"), 1)},
			want:    []string{"n1", "no suitable node (1 node is not ready; 1 node is not available for new tasks (paused or drained); 1 node lacks WireGuard (the task is on an encrypted network); 1 node already runs the service's maximum of 1 per node)"},
		},
		{
			name: "pinned tasks", nodes: mixed, networks: networks,
			pending: []*api.Task{on(pinnedTask("g1", "agent", "n1"), "secure"), on(pinnedTask("g2", "agent", "n2"), "secure"), on(pinnedTask("g3", "agent", "n2"), "plain")},
			want:    []string{"n1", wgOnly, "n2"},
		},
		{
			name: "pinned after a plain group of the same constraints", nodes: mixed, networks: networks,
			pending: []*api.Task{on(pinnedTask("g1", "agent", "n2"), "plain"), on(pinnedTask("g2", "agent", "n2"), "secure")},
			want:    []string{"n2", wgOnly},
		},
		{
			name: "networks not synced count as plain", nodes: mixed,
			pending: []*api.Task{on(pendingTask("a", "web"), "secure"), on(pendingTask("b", "web"), "secure")},
			want:    []string{"n1", "n2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New()
			s.Sync(tt.nodes, nil)
			if tt.networks != nil {
				s.SyncNetworks(tt.networks)
			}
			ds := s.Schedule(tt.pending)
			if len(ds) != len(tt.want) {
				t.Fatalf("got %d decisions, want %d", len(ds), len(tt.want))
			}
			for i, d := range ds {
				got := d.NodeID
				if got == "" {
					got = d.Explanation
				}
				if got != tt.want[i] {
					t.Errorf("task %s: got %q, want %q", d.Task.GetId(), got, tt.want[i])
				}
			}
		})
	}
}

// TestSyncNetworksReplaces checks that a network no longer in the list, or
// no longer encrypted, stops requiring WireGuard.
func TestSyncNetworksReplaces(t *testing.T) {
	s := New()
	s.Sync([]*api.Node{node("n1")}, nil)
	s.SyncNetworks([]*api.Network{{Id: "secure", Spec: &api.NetworkSpec{Encrypted: true}}})
	if d := s.Schedule([]*api.Task{on(pendingTask("a", "web"), "secure")}); d[0].NodeID != "" {
		t.Fatalf("task on an encrypted network placed on %s, a node without WireGuard", d[0].NodeID)
	}
	s.SyncNetworks(nil)
	if d := s.Schedule([]*api.Task{on(pendingTask("b", "web"), "secure")}); d[0].NodeID != "n1" {
		t.Fatalf("after SyncNetworks(nil): (%q, %q), want n1", d[0].NodeID, d[0].Explanation)
	}
}
