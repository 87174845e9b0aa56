package scheduler

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

const (
	gib = int64(1) << 30
	mib = int64(1) << 20
)

// capacity gives a node CPUs and memory, as its description reports them.
func capacity(cpus, memory int64) nodeOpt {
	return func(n *api.Node) {
		n.Description.NanoCpus = cpus * api.NanoCPU
		n.Description.MemoryBytes = memory
	}
}

// reserving sets what a task reserves.
func reserving(t *api.Task, nanoCPUs, memory int64) *api.Task {
	t.Spec.Resources = &api.ResourceRequirements{Reservations: &api.Resources{NanoCpus: nanoCPUs, MemoryBytes: memory}}
	return t
}

func maxPerNode(t *api.Task, n uint64) *api.Task {
	t.Spec.Placement.MaxReplicasPerNode = n
	return t
}

func spreadOver(t *api.Task, labels ...string) *api.Task {
	for _, l := range labels {
		t.Spec.Placement.Preferences = append(t.Spec.Placement.Preferences, &api.PlacementPreference{Spread: "node.labels." + l})
	}
	return t
}

// each applies f to every task.
func each(ts []*api.Task, f func(*api.Task) *api.Task) []*api.Task {
	for _, t := range ts {
		f(t)
	}
	return ts
}

// pinnedTask is a global service's task, made for its node.
func pinnedTask(id, service, nodeID string, constraints ...string) *api.Task {
	t := pendingTask(id, service, constraints...)
	t.NodeId = nodeID
	return t
}

func TestLimitFilters(t *testing.T) {
	n := node("n1", capacity(2, 4*gib))
	task := &api.Task{Id: "t"}
	free := func(v int64) func(*api.Node) int64 { return func(*api.Node) int64 { return v } }
	running := func(v int32) func(*api.Node) int32 { return func(*api.Node) int32 { return v } }
	tests := []struct {
		name   string
		filter Filter
		want   bool
		n      int
		why    string
	}{
		{"cpu fits", CPUFilter(api.NanoCPU, free(api.NanoCPU)), true, 1, "1 node lacks CPU (the task reserves 1 CPUs)"},
		{"cpu short", CPUFilter(api.NanoCPU/2, free(api.NanoCPU/2-1)), false, 3, "3 nodes lack CPU (the task reserves 0.5 CPUs)"},
		{"memory fits", MemoryFilter(512*mib, free(512*mib)), true, 1, "1 node lacks memory (the task reserves 512MiB)"},
		{"memory short", MemoryFilter(3*gib/2, free(gib)), false, 2, "2 nodes lack memory (the task reserves 1.5GiB)"},
		{"below the cap", MaxPerNodeFilter{Max: 2, Running: running(1)}, true, 1, "1 node already runs the service's maximum of 2 per node"},
		{"at the cap", MaxPerNodeFilter{Max: 2, Running: running(2)}, false, 4, "4 nodes already run the service's maximum of 2 per node"},
	}
	for _, tt := range tests {
		if got := tt.filter.Check(task, n); got != tt.want {
			t.Errorf("%s: Check = %v, want %v", tt.name, got, tt.want)
		}
		if got := tt.filter.Explain(tt.n); got != tt.why {
			t.Errorf("%s: Explain(%d)\n got %q\nwant %q", tt.name, tt.n, got, tt.why)
		}
	}
}

func TestScheduleReservations(t *testing.T) {
	// n1 has room for two 1GiB tasks, n2 for one; n3 holds 1.5GiB already.
	nodes := []*api.Node{node("n1", capacity(4, 2*gib)), node("n2", capacity(4, gib)), node("n3", capacity(4, 2*gib))}
	running := reserving(runningTask("old", "db", "n3"), 0, 3*gib/2)
	s := New()
	s.Sync(nodes, []*api.Task{running})
	ds := s.Schedule(each(tasks("web", 4), func(t *api.Task) *api.Task { return reserving(t, 0, gib) }))
	got := perNode(ds)
	if want := map[string]int{"n1": 2, "n2": 1, "": 1}; !mapsEqual(got, want) {
		t.Fatalf("placements = %v, want %v", got, want)
	}
	const why = "no suitable node (3 nodes lack memory (the task reserves 1GiB))"
	if d := ds[3]; d.NodeID != "" || d.Explanation != why {
		t.Fatalf("last task: (%q, %q), want unplaced with %q", d.NodeID, d.Explanation, why)
	}

	// The old task ending frees its reservation.
	s.TaskGone(running)
	if got := s.Schedule(each(tasks("late", 1), func(t *api.Task) *api.Task { return reserving(t, 0, gib) })); got[0].NodeID != "n3" {
		t.Fatalf("after the old task ended, placed on %q, want n3", got[0].NodeID)
	}
}

func TestScheduleCPUReservations(t *testing.T) {
	s := New()
	s.Sync([]*api.Node{node("n1", capacity(1, 8*gib)), node("n2", capacity(2, 8*gib))}, nil)
	ds := s.Schedule(each(tasks("web", 4), func(t *api.Task) *api.Task { return reserving(t, api.NanoCPU*3/4, 0) }))
	if got, want := perNode(ds), map[string]int{"n1": 1, "n2": 2, "": 1}; !mapsEqual(got, want) {
		t.Fatalf("placements = %v, want %v", got, want)
	}
	if why := ds[3].Explanation; why != "no suitable node (2 nodes lack CPU (the task reserves 0.75 CPUs))" {
		t.Fatalf("explanation %q", why)
	}
}

func TestScheduleMaxPerNode(t *testing.T) {
	s := New()
	s.Sync([]*api.Node{node("n1"), node("n2"), node("n3", drained)}, []*api.Task{runningTask("w0", "web", "n1")})
	ds := s.Schedule(each(tasks("web", 4), func(t *api.Task) *api.Task { return maxPerNode(t, 2) }))
	if got, want := perNode(ds), map[string]int{"n1": 1, "n2": 2, "": 1}; !mapsEqual(got, want) {
		t.Fatalf("placements = %v, want %v", got, want)
	}
	const why = "no suitable node (1 node is not available for new tasks (paused or drained); 2 nodes already run the service's maximum of 2 per node)"
	if got := ds[3].Explanation; got != why {
		t.Fatalf("explanation\n got %q\nwant %q", got, why)
	}
	// Other services are not capped by web's limit.
	if got := perNode(s.Schedule(tasks("other", 2))); !mapsEqual(got, map[string]int{"n1": 1, "n2": 1}) {
		t.Fatalf("other service placed %v", got)
	}
}

// TestScheduleExplanationCounts pins the whole "why is my task pending"
// message when several reasons apply: each node is counted once, for the
// first filter it fails, with the fixed filters before the limits.
func TestScheduleExplanationCounts(t *testing.T) {
	nodes := []*api.Node{
		node("n1", capacity(8, gib), label("zone", "eu")),   // lacks memory
		node("n2", capacity(8, gib), label("zone", "eu")),   // lacks memory
		node("n3", capacity(8, 8*gib), label("zone", "us")), // constraint
		node("n4", capacity(8, 8*gib), down),                // not ready
		node("n5", capacity(1, 8*gib), label("zone", "eu")), // lacks CPU
	}
	s := New()
	s.Sync(nodes, nil)
	task := reserving(pendingTask("t", "web", "node.labels.zone==eu"), 2*api.NanoCPU, 2*gib)
	ds := s.Schedule([]*api.Task{task})
	const want = "no suitable node (1 node is not ready; 1 node does not satisfy constraint node.labels.zone==eu; 1 node lacks CPU (the task reserves 2 CPUs); 2 nodes lack memory (the task reserves 2GiB))"
	if ds[0].Explanation != want {
		t.Fatalf("explanation\n got %q\nwant %q", ds[0].Explanation, want)
	}
}

func TestSchedulePinned(t *testing.T) {
	nodes := []*api.Node{
		node("n1", capacity(2, 2*gib), label("zone", "eu")),
		node("n2", capacity(2, 2*gib), drained),
		node("n3", capacity(2, gib/2)),
		node("n4", capacity(2, 2*gib), label("zone", "us")),
	}
	s := New()
	s.Sync(nodes, nil)
	mem := func(t *api.Task) *api.Task { return reserving(t, 0, gib) }
	ds := s.Schedule([]*api.Task{
		mem(pinnedTask("g1", "agent", "n1")),
		mem(pinnedTask("g2", "agent", "n2")),
		mem(pinnedTask("g3", "agent", "n3")),
		mem(pinnedTask("g4", "agent", "n4", "node.labels.zone==eu")),
		mem(pinnedTask("g5", "agent", "gone")),
	})
	want := []Decision{
		{NodeID: "n1"},
		{Explanation: "no suitable node (1 node is not available for new tasks (paused or drained))"},
		{Explanation: "no suitable node (1 node lacks memory (the task reserves 1GiB))"},
		{Explanation: "no suitable node (1 node does not satisfy constraint node.labels.zone==eu)"},
		{Explanation: "no suitable node (its node gone is not part of the cluster)"},
	}
	for i, w := range want {
		if ds[i].NodeID != w.NodeID || ds[i].Explanation != w.Explanation {
			t.Errorf("%s: (%q, %q), want (%q, %q)", ds[i].Task.GetId(), ds[i].NodeID, ds[i].Explanation, w.NodeID, w.Explanation)
		}
	}
	// g1 counts on n1 like any placed task: its memory is taken.
	next := s.Schedule([]*api.Task{reserving(pendingTask("r", "web"), 0, 3*gib/2)})
	if next[0].NodeID != "n4" {
		t.Fatalf("next task placed on %q, want n4 (n1 has 1GiB left)", next[0].NodeID)
	}
}

func TestScheduleSpreadPreference(t *testing.T) {
	zone := func(id, z string, opts ...nodeOpt) *api.Node { return node(id, append(opts, label("zone", z))...) }
	tests := []struct {
		name    string
		nodes   []*api.Node
		running []*api.Task
		pending []*api.Task
		want    map[string]int
	}{
		{
			name:    "even over zones before nodes: the one-node zone gets as many as the three-node one",
			nodes:   []*api.Node{zone("a1", "a"), zone("a2", "a"), zone("a3", "a"), zone("b1", "b")},
			pending: each(tasks("web", 6), func(t *api.Task) *api.Task { return spreadOver(t, "zone") }),
			want:    map[string]int{"a1": 1, "a2": 1, "a3": 1, "b1": 3},
		},
		{
			name:    "nodes without the label are one more value",
			nodes:   []*api.Node{zone("a1", "a"), zone("a2", "a"), node("x1"), node("x2")},
			pending: each(tasks("web", 4), func(t *api.Task) *api.Task { return spreadOver(t, "zone") }),
			want:    map[string]int{"a1": 1, "a2": 1, "x1": 1, "x2": 1},
		},
		{
			name:  "existing tasks count: the zone that has fewer catches up first",
			nodes: []*api.Node{zone("a1", "a"), zone("b1", "b"), zone("c1", "c")},
			running: []*api.Task{
				runningTask("r1", "web", "a1"), runningTask("r2", "web", "a1"), runningTask("r3", "web", "b1"),
			},
			pending: each(tasks("web", 3), func(t *api.Task) *api.Task { return spreadOver(t, "zone") }),
			want:    map[string]int{"b1": 1, "c1": 2},
		},
		{
			name: "two levels: zones, then racks within each zone, then nodes",
			nodes: []*api.Node{
				zone("a1", "a", label("rack", "r1")), zone("a2", "a", label("rack", "r1")), zone("a3", "a", label("rack", "r2")),
				zone("b1", "b", label("rack", "r1")),
			},
			pending: each(tasks("web", 8), func(t *api.Task) *api.Task { return spreadOver(t, "zone", "rack") }),
			want:    map[string]int{"a1": 1, "a2": 1, "a3": 2, "b1": 4},
		},
		{
			name:    "a full zone gives its share to the others",
			nodes:   []*api.Node{zone("a1", "a", capacity(1, gib)), zone("b1", "b", capacity(1, 8*gib))},
			pending: each(tasks("web", 4), func(t *api.Task) *api.Task { return reserving(spreadOver(t, "zone"), 0, gib) }),
			want:    map[string]int{"a1": 1, "b1": 3},
		},
		{
			name:    "drained nodes are no candidates, so their zone gets nothing",
			nodes:   []*api.Node{zone("a1", "a", drained), zone("b1", "b"), zone("c1", "c")},
			pending: each(tasks("web", 4), func(t *api.Task) *api.Task { return spreadOver(t, "zone") }),
			want:    map[string]int{"b1": 2, "c1": 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New()
			s.Sync(tt.nodes, tt.running)
			if got := perNode(s.Schedule(tt.pending)); !mapsEqual(got, tt.want) {
				t.Errorf("placements = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestSpreadPreferenceIsEven: on random clusters, replicas spread over a
// label end up even over its values (within one), and within each value
// even over its nodes, whether placed at once or a few at a time.
func TestSpreadPreferenceIsEven(t *testing.T) {
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 11))
		values := []string{"eu", "us", "ap", "sa", ""}[:1+rng.IntN(5)]
		var nodes []*api.Node
		for i := range 1 + rng.IntN(30) {
			var opts []nodeOpt
			if v := values[rng.IntN(len(values))]; v != "" {
				opts = append(opts, label("zone", v))
			}
			nodes = append(nodes, node(fmt.Sprintf("n%02d", i), opts...))
		}
		replicas := rng.IntN(100)
		pending := each(tasks("web", replicas), func(t *api.Task) *api.Task { return spreadOver(t, "zone") })
		s := New()
		s.Sync(nodes, nil)
		var ds []Decision
		for len(pending) > 0 { // batches, as the scheduler loop sees them
			n := min(len(pending), 1+rng.IntN(10))
			ds = append(ds, s.Schedule(pending[:n])...)
			pending = pending[n:]
		}

		perValue := map[string]int{}
		perNodeOf := map[string]map[string]int{}
		zoneOf := map[string]string{}
		for _, n := range nodes {
			z := n.Spec.Labels["zone"]
			zoneOf[n.Id] = z
			perValue[z] += 0
			if perNodeOf[z] == nil {
				perNodeOf[z] = map[string]int{}
			}
			perNodeOf[z][n.Id] += 0
		}
		for _, d := range ds {
			if d.NodeID == "" {
				t.Fatalf("seed %d: task %s unplaced: %s", seed, d.Task.Id, d.Explanation)
			}
			perValue[zoneOf[d.NodeID]]++
			perNodeOf[zoneOf[d.NodeID]][d.NodeID]++
		}
		if lo, hi := spanOf(perValue); hi-lo > 1 {
			t.Fatalf("seed %d: %d replicas over zones %v: uneven", seed, replicas, perValue)
		}
		for z, m := range perNodeOf {
			if lo, hi := spanOf(m); hi-lo > 1 {
				t.Fatalf("seed %d: zone %q: replicas per node %v: uneven", seed, z, m)
			}
		}
	}
}

func spanOf(m map[string]int) (lo, hi int) {
	vs := slices.Collect(maps.Values(m))
	return slices.Min(vs), slices.Max(vs)
}

// TestScheduleLimitsMatchReference compares placement under reservations
// and a cap per node with the rule written out the slow way: each task,
// in order, to the best node by the spread rule among those that still
// fit it.
func TestScheduleLimitsMatchReference(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 13))
		var nodes []*api.Node
		for i := range 1 + rng.IntN(25) {
			opts := []nodeOpt{capacity(int64(1+rng.IntN(4)), int64(1+rng.IntN(8))*gib)}
			if rng.IntN(6) == 0 {
				opts = append(opts, drained)
			}
			nodes = append(nodes, node(fmt.Sprintf("n%02d", i), opts...))
		}
		services := 1 + rng.IntN(4)
		var pending []*api.Task
		for i := range rng.IntN(120) {
			svc := rng.IntN(services)
			// A service's tasks are alike, as a spec makes them.
			task := reserving(pendingTask(fmt.Sprintf("p%d", i), fmt.Sprintf("s%d", svc)), int64(svc)*api.NanoCPU/4, int64(svc%3)*gib/2)
			pending = append(pending, maxPerNode(task, uint64(svc%3)))
		}
		s := New()
		s.Sync(nodes, nil)
		got := s.Schedule(pending)

		type use struct{ cpu, mem, total int64 }
		used := map[string]*use{}
		perSvc := map[string]int{}
		for _, n := range nodes {
			used[n.Id] = &use{}
		}
		groups := []string{}
		for _, p := range pending {
			if !slices.Contains(groups, p.ServiceId) {
				groups = append(groups, p.ServiceId)
			}
		}
		want := map[string]string{}
		for _, g := range groups {
			for _, p := range pending {
				if p.ServiceId != g {
					continue
				}
				res := p.Spec.Resources.Reservations
				best := ""
				for _, n := range nodes {
					u := used[n.Id]
					if !(AvailabilityFilter{}).Check(p, n) ||
						n.Description.NanoCpus-u.cpu < res.NanoCpus || n.Description.MemoryBytes-u.mem < res.MemoryBytes ||
						(p.Spec.Placement.MaxReplicasPerNode > 0 && perSvc[g+"/"+n.Id] >= int(p.Spec.Placement.MaxReplicasPerNode)) {
						continue
					}
					if best == "" || perSvc[g+"/"+n.Id] < perSvc[g+"/"+best] ||
						(perSvc[g+"/"+n.Id] == perSvc[g+"/"+best] && u.total < used[best].total) {
						best = n.Id
					}
				}
				want[p.Id] = best
				if best != "" {
					used[best].cpu += res.NanoCpus
					used[best].mem += res.MemoryBytes
					used[best].total++
					perSvc[g+"/"+best]++
				}
			}
		}
		for _, d := range got {
			if d.NodeID != want[d.Task.Id] {
				t.Fatalf("seed %d: task %s of %s on %q, reference says %q", seed, d.Task.Id, d.Task.ServiceId, d.NodeID, want[d.Task.Id])
			}
			if (d.NodeID == "") != (d.Explanation != "") {
				t.Fatalf("seed %d: task %s: node %q with explanation %q", seed, d.Task.Id, d.NodeID, d.Explanation)
			}
		}
	}
}
