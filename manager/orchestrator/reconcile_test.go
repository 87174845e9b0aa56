package orchestrator

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func TestReconcileFreshService(t *testing.T) {
	svc := newService(3, withRestart(&api.RestartPolicy{MaxAttempts: 2}))
	p := Reconcile(now, Config{}, svc, nil, testNodes())

	if len(p.Update)+len(p.Remove) != 0 {
		t.Fatalf("fresh service: want only creates, got %v", describe(p))
	}
	if len(p.Create) != 3 {
		t.Fatalf("fresh service with 3 replicas: got %d creates, want 3", len(p.Create))
	}
	if !p.Wake.IsZero() {
		t.Errorf("Wake = %v, want zero: nothing is delayed", p.Wake)
	}
	ids := map[string]bool{}
	for i, c := range p.Create {
		if want := uint64(i + 1); c.Slot != want {
			t.Errorf("create %d: slot %d, want %d", i, c.Slot, want)
		}
		if c.Id == "" || ids[c.Id] {
			t.Errorf("create %d: id %q empty or repeated", i, c.Id)
		}
		ids[c.Id] = true
		if c.ServiceId != "svc" || c.ServiceName != "web" || c.SpecVersion != 1 {
			t.Errorf("create %d: service %q/%q version %d", i, c.ServiceId, c.ServiceName, c.SpecVersion)
		}
		if c.DesiredState != running || c.Status.GetState() != newState {
			t.Errorf("create %d: desired %v state %v, want RUNNING/NEW", i, c.DesiredState, c.Status.GetState())
		}
		if !c.Status.GetTimestamp().AsTime().Equal(now) || c.Status.GetMessage() == "" {
			t.Errorf("create %d: status %v, want timestamp now and a message", i, c.Status)
		}
		if c.RestartCount != 0 || c.BackoffStep != 0 || c.NotBefore != nil || c.NodeId != "" {
			t.Errorf("create %d: restarts %d step %d not_before %v node %q, want all zero",
				i, c.RestartCount, c.BackoffStep, c.NotBefore, c.NodeId)
		}
		if !proto.Equal(c.Spec, svc.Spec.Task) {
			t.Errorf("create %d: spec %v, want the service's %v", i, c.Spec, svc.Spec.Task)
		}
		if c.Spec == svc.Spec.Task {
			t.Errorf("create %d: spec shares memory with the service", i)
		}
	}
}

func TestReconcileNotReplicated(t *testing.T) {
	svc := newService(3)
	svc.Spec.Mode = nil
	p := Reconcile(now, Config{}, svc, []*api.Task{newTask(1, running)}, testNodes())
	if !p.Empty() {
		t.Errorf("service without replicated mode: want empty plan, got %v", describe(p))
	}
}

func TestReconcileScale(t *testing.T) {
	tests := []struct {
		name     string
		replicas uint64
		tasks    []*api.Task
		want     []string
	}{
		{
			name:     "steady",
			replicas: 2,
			tasks:    []*api.Task{newTask(1, running), newTask(2, running)},
		},
		{
			name:     "scale up fills the next slots",
			replicas: 4,
			tasks:    []*api.Task{newTask(1, running), newTask(2, running)},
			want: []string{
				"create slot=3 restarts=0 step=0 delay=0s",
				"create slot=4 restarts=0 step=0 delay=0s",
			},
		},
		{
			name:     "scale up fills holes first",
			replicas: 3,
			tasks:    []*api.Task{newTask(2, running), newTask(5, running)},
			want: []string{
				"create slot=1 restarts=0 step=0 delay=0s",
			},
		},
		{
			name:     "scale down removes the highest running slots",
			replicas: 1,
			tasks: []*api.Task{
				newTask(1, running, withID("a")),
				newTask(2, running, withID("b")),
				newTask(3, running, withID("c")),
			},
			want: []string{"update b desired=remove", "update c desired=remove"},
		},
		{
			name:     "scale down prefers slots not yet running",
			replicas: 2,
			tasks: []*api.Task{
				newTask(1, pending, withID("p")),
				newTask(2, running, withID("r2")),
				newTask(3, assigned, withID("a3")),
				newTask(4, running, withID("r4")),
			},
			want: []string{"remove p", "update a3 desired=remove"},
		},
		{
			name:     "scale down takes the slot's history along",
			replicas: 1,
			tasks: []*api.Task{
				newTask(1, running),
				newTask(2, failed, withID("old"), desired(shutdown)),
				newTask(2, running, withID("cur"), restarts(1)),
			},
			want: []string{"remove old", "update cur desired=remove"},
		},
		{
			name:     "scale to zero",
			replicas: 0,
			tasks:    []*api.Task{newTask(1, running, withID("a")), newTask(2, newState, withID("b"))},
			want:     []string{"remove b", "update a desired=remove"},
		},
		{
			name:     "removed slot is deleted once its task ended",
			replicas: 1,
			tasks: []*api.Task{
				newTask(1, running),
				newTask(2, shutdown, withID("gone"), desired(removeSt)),
				newTask(3, running, withID("stopping"), desired(removeSt)),
			},
			want: []string{"remove gone"},
		},
		{
			name:     "slot 0 is never valid",
			replicas: 1,
			tasks:    []*api.Task{newTask(0, running, withID("zero"))},
			want: []string{
				"create slot=1 restarts=0 step=0 delay=0s",
				"update zero desired=remove",
			},
		},
		{
			name:     "scale up reuses a slot that is being removed",
			replicas: 2,
			tasks: []*api.Task{
				newTask(1, running),
				newTask(2, running, withID("leaving"), desired(removeSt)),
			},
			want: []string{"create slot=2 restarts=0 step=0 delay=0s"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := describe(Reconcile(now, Config{}, newService(tt.replicas), tt.tasks, testNodes()))
			if !slices.Equal(got, tt.want) {
				t.Errorf("plan:\n  got  %q\n  want %q", got, tt.want)
			}
		})
	}
}

// TestReconcileScaleSequence drives one service 3 → 5 → 1 through the
// plans Reconcile makes, as the controller would.
func TestReconcileScaleSequence(t *testing.T) {
	nodes := testNodes()
	var tasks []*api.Task
	for _, step := range []struct {
		replicas  uint64
		wantSlots []uint64
	}{
		{3, []uint64{1, 2, 3}},
		{5, []uint64{1, 2, 3, 4, 5}},
		{1, []uint64{1}},
	} {
		svc := newService(step.replicas)
		p := Reconcile(now, Config{}, svc, tasks, nodes)
		tasks = apply(tasks, p, now)
		// The workers run whatever is desired RUNNING and stop the rest.
		for i, tk := range tasks {
			c := proto.Clone(tk).(*api.Task)
			c.NodeId = nodeReady
			if c.DesiredState == running {
				c.Status.State = running
			} else {
				c.Status.State = shutdown
			}
			tasks[i] = c
		}
		tasks = apply(tasks, Reconcile(now, Config{}, svc, tasks, nodes), now)

		var slots []uint64
		for slot, rs := range runnableBySlot(tasks) {
			if len(rs) != 1 {
				t.Fatalf("replicas %d: slot %d has %d runnable tasks", step.replicas, slot, len(rs))
			}
			slots = append(slots, slot)
		}
		slices.Sort(slots)
		if !slices.Equal(slots, step.wantSlots) {
			t.Errorf("replicas %d: running slots %v, want %v", step.replicas, slots, step.wantSlots)
		}
		if len(tasks) != len(step.wantSlots) {
			t.Errorf("replicas %d: %d tasks left in the store, want %d (removed tasks deleted)", step.replicas, len(tasks), len(step.wantSlots))
		}
	}
}

func TestReconcileRestartCondition(t *testing.T) {
	const (
		anyCond   = api.RestartCondition_RESTART_CONDITION_ANY
		onFailure = api.RestartCondition_RESTART_CONDITION_ON_FAILURE
		none      = api.RestartCondition_RESTART_CONDITION_NONE
		unset     = api.RestartCondition_RESTART_CONDITION_UNSPECIFIED
	)
	replaced := []string{"create slot=1 restarts=1 step=0 delay=0s", "update old desired=shutdown"}
	givenUp := []string{"update old desired=shutdown"}
	tests := []struct {
		name string
		cond api.RestartCondition
		old  *api.Task
		want []string
	}{
		{"default restarts complete", unset, newTask(1, complete, withID("old")), replaced},
		{"default restarts failed", unset, newTask(1, failed, withID("old")), replaced},
		{"any restarts complete", anyCond, newTask(1, complete, withID("old")), replaced},
		{"any restarts rejected", anyCond, newTask(1, rejected, withID("old"), neverStarted()), []string{
			"create slot=1 restarts=1 step=1 delay=100ms", "update old desired=shutdown",
		}},
		{"on-failure restarts failed", onFailure, newTask(1, failed, withID("old")), replaced},
		{"on-failure keeps complete", onFailure, newTask(1, complete, withID("old")), givenUp},
		{"on-failure restarts lost", onFailure, newTask(1, running, withID("old"), onNode(nodeDown)), replaced},
		{"none keeps failed", none, newTask(1, failed, withID("old")), givenUp},
		{"none keeps lost", none, newTask(1, running, withID("old"), onNode(nodeDown)), givenUp},
		{"shut down by the worker counts as ended", anyCond, newTask(1, shutdown, withID("old")), replaced},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := newService(1, withRestart(&api.RestartPolicy{Condition: tt.cond}))
			tasks := []*api.Task{tt.old}
			p := Reconcile(now, Config{}, svc, tasks, testNodes())
			if got := describe(p); !slices.Equal(got, tt.want) {
				t.Fatalf("plan:\n  got  %q\n  want %q", got, tt.want)
			}
			// A slot given up on stays given up: its ended task is the
			// slot's last word and is neither restarted nor pruned.
			next := apply(tasks, p, now)
			if p2 := Reconcile(now.Add(time.Hour), Config{}, svc, next, testNodes()); !p2.Empty() {
				t.Errorf("second round: want empty plan, got %q", describe(p2))
			}
		})
	}
}

func TestReconcileMaxAttempts(t *testing.T) {
	svc := newService(1, withRestart(&api.RestartPolicy{MaxAttempts: 3}))
	tests := []struct {
		restarts uint64
		want     []string
	}{
		{0, []string{"create slot=1 restarts=1 step=0 delay=0s", "update old desired=shutdown"}},
		{2, []string{"create slot=1 restarts=3 step=0 delay=0s", "update old desired=shutdown"}},
		{3, []string{"update old desired=shutdown"}},
		{9, []string{"update old desired=shutdown"}},
	}
	for _, tt := range tests {
		tasks := []*api.Task{newTask(1, failed, withID("old"), restarts(tt.restarts))}
		p := Reconcile(now, Config{}, svc, tasks, testNodes())
		if got := describe(p); !slices.Equal(got, tt.want) {
			t.Errorf("restart_count %d: plan\n  got  %q\n  want %q", tt.restarts, got, tt.want)
		}
	}

	// A spec change gives a slot that was given up on a fresh start.
	given := []*api.Task{newTask(1, failed, withID("old"), restarts(3), desired(shutdown))}
	got := describe(Reconcile(now, Config{}, newService(1, withRestart(&api.RestartPolicy{MaxAttempts: 3}), withSpecVersion(2)), given, testNodes()))
	if want := []string{"create slot=1 restarts=0 step=0 delay=0s"}; !slices.Equal(got, want) {
		t.Errorf("given-up slot after spec change: plan %q, want %q", got, want)
	}
}

// TestReconcileBackoffSequence drives a crash loop: every task fails one
// second after it started, so each replacement waits twice as long, up
// to the 30s cap.
func TestReconcileBackoffSequence(t *testing.T) {
	svc := newService(1)
	nodes := testNodes()
	clock := now
	tasks := apply(nil, Reconcile(clock, Config{}, svc, nil, nodes), clock)

	wantDelays := []time.Duration{
		100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
		1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond, 12800 * time.Millisecond,
		25600 * time.Millisecond, 30 * time.Second, 30 * time.Second, 30 * time.Second,
	}
	for i, wantDelay := range wantDelays {
		attempt := uint64(i + 1)
		// The current task starts and crashes a second later.
		cur := runnableBySlot(tasks)[1][0]
		crashed := proto.Clone(cur).(*api.Task)
		crashed.NodeId = nodeReady
		crashed.Status = &api.TaskStatus{
			State:     failed,
			StartedAt: timestampAt(clock),
			Timestamp: timestampAt(clock.Add(time.Second)),
		}
		tasks = apply(tasks, Plan{Update: []*api.Task{crashed}}, clock)
		clock = clock.Add(2 * time.Second)

		p := Reconcile(clock, Config{}, svc, tasks, nodes)
		if len(p.Create) != 1 || len(p.Update) != 1 {
			t.Fatalf("attempt %d: plan %q, want one replacement and one shutdown", attempt, describe(p))
		}
		c := p.Create[0]
		if c.RestartCount != attempt || c.BackoffStep != uint32(attempt) {
			t.Errorf("attempt %d: restart_count %d backoff_step %d, want %d and %d", attempt, c.RestartCount, c.BackoffStep, attempt, attempt)
		}
		if c.NotBefore == nil || !c.NotBefore.AsTime().Equal(clock.Add(wantDelay)) {
			t.Errorf("attempt %d: not_before %v, want now+%v", attempt, c.NotBefore.AsTime(), wantDelay)
		}
		if !p.Wake.Equal(clock.Add(wantDelay)) {
			t.Errorf("attempt %d: Wake %v, want now+%v", attempt, p.Wake, wantDelay)
		}
		wantMsg := "restart delayed " + wantDelay.String()
		if msg := c.Status.GetMessage(); !strings.Contains(msg, wantMsg) || !strings.Contains(msg, "attempt") {
			t.Errorf("attempt %d: message %q, want it to say %q and the attempt", attempt, msg, wantMsg)
		}
		tasks = apply(tasks, p, clock)

		// While the delay runs, nothing changes and Wake stays.
		if p2 := Reconcile(clock, Config{}, svc, tasks, nodes); !p2.Empty() || !p2.Wake.Equal(p.Wake) {
			t.Fatalf("attempt %d: during the delay got plan %q wake %v, want empty plan waking at %v", attempt, describe(p2), p2.Wake, p.Wake)
		}
		clock = clock.Add(wantDelay)
		if len(tasks) > DefaultTaskHistoryLimit+1 {
			t.Fatalf("attempt %d: %d tasks kept, want at most %d", attempt, len(tasks), DefaultTaskHistoryLimit+1)
		}
	}
}

func TestReconcileBackoffStep(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		old  *api.Task
		want string
	}{
		{"ran exactly the healthy time resets", Config{}, newTask(1, failed, restarts(4), backoff(4), ranFor(10*time.Second)),
			"create slot=1 restarts=5 step=0 delay=0s"},
		{"ran just short of it backs off", Config{}, newTask(1, failed, restarts(4), backoff(4), ranFor(10*time.Second-time.Millisecond)),
			"create slot=1 restarts=5 step=5 delay=1.6s"},
		{"completed resets even when quick", Config{}, newTask(1, complete, restarts(4), backoff(4), ranFor(time.Millisecond)),
			"create slot=1 restarts=5 step=0 delay=0s"},
		{"never started backs off", Config{}, newTask(1, rejected, restarts(1), backoff(1), neverStarted()),
			"create slot=1 restarts=2 step=2 delay=200ms"},
		{"custom healthy run", Config{HealthyRun: time.Minute}, newTask(1, failed, backoff(2), ranFor(30*time.Second)),
			"create slot=1 restarts=1 step=3 delay=400ms"},
		{"lost after a long run resets", Config{}, newTask(1, running, onNode(nodeDown), backoff(3)),
			"create slot=1 restarts=1 step=0 delay=0s"},
		{"lost before it started backs off", Config{}, newTask(1, assigned, onNode(nodeDown), backoff(3)),
			"create slot=1 restarts=1 step=4 delay=800ms"},
		{"step saturates", Config{}, newTask(1, failed, backoff(^uint32(0)), ranFor(time.Second)),
			"create slot=1 restarts=1 step=4294967295 delay=30s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Reconcile(now, tt.cfg, newService(1), []*api.Task{tt.old}, testNodes())
			if len(p.Create) != 1 {
				t.Fatalf("plan %q, want one replacement", describe(p))
			}
			if got := describe(Plan{Create: p.Create}); got[0] != tt.want {
				t.Errorf("replacement %q, want %q", got[0], tt.want)
			}
		})
	}
}

func TestReconcileRestartDelayFromPolicy(t *testing.T) {
	svc := newService(1, withRestart(&api.RestartPolicy{Delay: durationpb.New(5 * time.Second)}))
	p := Reconcile(now, Config{}, svc, []*api.Task{newTask(1, failed)}, testNodes())
	if got, want := describe(p)[0], "create slot=1 restarts=1 step=0 delay=5s"; got != want {
		t.Errorf("replacement %q, want %q (the policy's delay applies to the first restart)", got, want)
	}
	if !p.Wake.Equal(now.Add(5 * time.Second)) {
		t.Errorf("Wake %v, want now+5s", p.Wake)
	}
}

func TestReconcileSpecChange(t *testing.T) {
	tests := []struct {
		name  string
		tasks []*api.Task
		want  []string
	}{
		{
			name:  "running task replaced",
			tasks: []*api.Task{newTask(1, running, withID("a"), restarts(3), backoff(2))},
			want:  []string{"create slot=1 restarts=0 step=0 delay=0s", "update a desired=shutdown"},
		},
		{
			name:  "pending task that never got a node is deleted",
			tasks: []*api.Task{newTask(1, pending, withID("p"))},
			want:  []string{"create slot=1 restarts=0 step=0 delay=0s", "remove p"},
		},
		{
			name:  "a spec change ends a restart delay",
			tasks: []*api.Task{newTask(1, newState, withID("d"), restarts(6), backoff(6), notBefore(now.Add(time.Minute)))},
			want:  []string{"create slot=1 restarts=0 step=0 delay=0s", "remove d"},
		},
		{
			name:  "ended task replaced whatever the restart policy",
			tasks: []*api.Task{newTask(1, complete, withID("c"))},
			want:  []string{"create slot=1 restarts=0 step=0 delay=0s", "update c desired=shutdown"},
		},
		{
			name:  "up-to-date task kept",
			tasks: []*api.Task{newTask(1, running, specVersion(2))},
		},
		{
			name: "old task still stopping is left alone",
			tasks: []*api.Task{
				newTask(1, running, withID("old"), desired(shutdown)),
				newTask(1, pending, specVersion(2)),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := newService(1, withSpecVersion(2), withRestart(&api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_NONE}))
			p := Reconcile(now, Config{}, svc, tt.tasks, testNodes())
			if got := describe(p); !slices.Equal(got, tt.want) {
				t.Errorf("plan:\n  got  %q\n  want %q", got, tt.want)
			}
			for _, c := range p.Create {
				if c.SpecVersion != 2 {
					t.Errorf("new task has spec_version %d, want 2", c.SpecVersion)
				}
			}
		})
	}

	// Scaling does not bump spec_version, so it replaces nothing.
	tasks := []*api.Task{newTask(1, running), newTask(2, running)}
	if got := describe(Reconcile(now, Config{}, newService(3), tasks, testNodes())); len(got) != 1 || !strings.HasPrefix(got[0], "create slot=3") {
		t.Errorf("scale 2→3: plan %q, want only slot 3 created", got)
	}
}

func TestReconcileDeletedService(t *testing.T) {
	tasks := []*api.Task{
		newTask(1, running, withID("run")),
		newTask(1, failed, withID("hist"), desired(shutdown)),
		newTask(2, pending, withID("unassigned")),
		newTask(3, running, withID("lost"), onNode(nodeDown)),
		newTask(4, running, withID("orphan"), onNode("deleted-node")),
		newTask(5, running, withID("stopping"), desired(removeSt)),
		newTask(5, shutdown, withID("stopped"), desired(removeSt)),
		newTask(6, assigned, withID("assigned")),
	}
	want := []string{
		"remove hist", "remove lost", "remove orphan", "remove stopped", "remove unassigned",
		"update assigned desired=remove", "update run desired=remove",
	}
	p := Reconcile(now, Config{}, nil, tasks, testNodes())
	if got := describe(p); !slices.Equal(got, want) {
		t.Errorf("plan:\n  got  %q\n  want %q", got, want)
	}
	if len(p.Create) != 0 {
		t.Errorf("deleted service must create nothing, got %d", len(p.Create))
	}
}

func TestReconcileHistory(t *testing.T) {
	// slotHistory returns a running current task (restart_count n) and
	// n ended tasks ids h0 (oldest) .. h<n-1> before it.
	slotHistory := func(n int) []*api.Task {
		var ts []*api.Task
		for i := range n {
			ts = append(ts, newTask(1, failed, withID("h"+string(rune('0'+i))), restarts(uint64(i)), desired(shutdown)))
		}
		return append(ts, newTask(1, running, withID("cur"), restarts(uint64(n))))
	}
	tests := []struct {
		name  string
		cfg   Config
		svc   *api.Service
		tasks []*api.Task
		want  []string
	}{
		{"five kept", Config{}, newService(1), slotHistory(5), nil},
		{"oldest beyond five removed", Config{}, newService(1), slotHistory(8),
			[]string{"remove h0", "remove h1", "remove h2"}},
		{"cluster limit", Config{TaskHistoryLimit: 6}, newService(1), slotHistory(8),
			[]string{"remove h0", "remove h1"}},
		{"service limit overrides cluster", Config{TaskHistoryLimit: 6}, newService(1, withHistoryLimit(2)), slotHistory(4),
			[]string{"remove h0", "remove h1"}},
		{
			name: "tasks still running are neither counted nor removed",
			svc:  newService(1, withHistoryLimit(1)),
			tasks: []*api.Task{
				newTask(1, running, withID("stopping"), desired(shutdown)),
				newTask(1, running, withID("lostOld"), onNode(nodeDown), desired(shutdown)),
				newTask(1, failed, withID("h0"), restarts(1), desired(shutdown)),
				newTask(1, failed, withID("h1"), restarts(2), desired(shutdown)),
				newTask(1, running, withID("cur"), restarts(3)),
			},
			want: []string{"remove h0"},
		},
		{
			name: "ended current counts as history in the same plan",
			svc:  newService(1, withHistoryLimit(2)),
			tasks: []*api.Task{
				newTask(1, failed, withID("h0"), restarts(0), desired(shutdown)),
				newTask(1, failed, withID("h1"), restarts(1), desired(shutdown)),
				newTask(1, failed, withID("cur"), restarts(2)),
			},
			want: []string{"create slot=1 restarts=3 step=0 delay=0s", "remove h0", "update cur desired=shutdown"},
		},
		{
			name: "history is per slot",
			svc:  newService(2, withHistoryLimit(1)),
			tasks: []*api.Task{
				newTask(1, failed, withID("a0"), desired(shutdown)),
				newTask(1, running, withID("a1"), restarts(1)),
				newTask(2, failed, withID("b0"), desired(shutdown)),
				newTask(2, failed, withID("b1"), restarts(1), desired(shutdown)),
				newTask(2, running, withID("b2"), restarts(2)),
			},
			want: []string{"remove b0"},
		},
		{
			name: "last word of a given-up slot is kept",
			svc:  newService(1, withHistoryLimit(1), withRestart(&api.RestartPolicy{MaxAttempts: 1})),
			tasks: []*api.Task{
				newTask(1, failed, withID("h0"), restarts(0), desired(shutdown)),
				newTask(1, failed, withID("last"), restarts(1), desired(shutdown)),
			},
			want: []string{"remove h0"},
		},
		{
			name: "a task taken out of service before it got a node is deleted",
			svc:  newService(1),
			tasks: []*api.Task{
				newTask(1, pending, withID("never"), desired(shutdown)),
				newTask(1, running, withID("cur"), restarts(1)),
			},
			want: []string{"remove never"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Reconcile(now, tt.cfg, tt.svc, tt.tasks, testNodes())
			if got := describe(p); !slices.Equal(got, tt.want) {
				t.Errorf("plan:\n  got  %q\n  want %q", got, tt.want)
			}
		})
	}
}

func TestReconcileLostNode(t *testing.T) {
	tests := []struct {
		name string
		task *api.Task
		want []string
	}{
		{"running on a down node is replaced", newTask(1, running, withID("x"), onNode(nodeDown)),
			[]string{"create slot=1 restarts=1 step=0 delay=0s", "update x desired=shutdown"}},
		{"assigned to a down node is replaced", newTask(1, assigned, withID("x"), onNode(nodeDown)),
			[]string{"create slot=1 restarts=1 step=1 delay=100ms", "update x desired=shutdown"}},
		{"running on a ready node is kept", newTask(1, running, withID("x")), nil},
		{"removed node is treated as lost", newTask(1, running, withID("x"), onNode("elsewhere")), []string{"create slot=1 restarts=1 step=0 delay=0s", "update x desired=shutdown"}},
		{"pending without a node is kept", newTask(1, pending, withID("x")), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := describe(Reconcile(now, Config{}, newService(1), []*api.Task{tt.task}, testNodes()))
			if !slices.Equal(got, tt.want) {
				t.Errorf("plan:\n  got  %q\n  want %q", got, tt.want)
			}
		})
	}
}

func TestReconcileDuplicates(t *testing.T) {
	tests := []struct {
		name  string
		tasks []*api.Task
		want  []string
	}{
		{
			name:  "the running one is kept over a new one",
			tasks: []*api.Task{newTask(1, running, withID("run")), newTask(1, newState, withID("new"))},
			want:  []string{"remove new"},
		},
		{
			name:  "the newest restart is kept",
			tasks: []*api.Task{newTask(1, running, withID("r1"), restarts(1)), newTask(1, running, withID("r0"))},
			want:  []string{"update r0 desired=remove"},
		},
		{
			name:  "duplicate on a down node is deleted",
			tasks: []*api.Task{newTask(1, running, withID("up")), newTask(1, running, withID("dn"), onNode(nodeDown))},
			want:  []string{"remove dn"},
		},
		{
			name:  "the newer spec is kept",
			tasks: []*api.Task{newTask(1, pending, withID("v1"), restarts(5)), newTask(1, pending, withID("v2"), specVersion(2))},
			want:  []string{"remove v1"},
		},
		{
			// A start-first update: the old task serves until the new
			// one does.
			name:  "a running task of the older spec stays while one of the newer starts",
			tasks: []*api.Task{newTask(1, running, withID("v1"), restarts(5)), newTask(1, pending, withID("v2"), specVersion(2))},
		},
		{
			name:  "once the newer one runs, the older one is shut down",
			tasks: []*api.Task{newTask(1, running, withID("v1"), restarts(5)), newTask(1, running, withID("v2"), specVersion(2))},
			want:  []string{"update v1 desired=shutdown"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			version := uint64(1)
			for _, tk := range tt.tasks {
				version = max(version, tk.SpecVersion)
			}
			got := describe(Reconcile(now, Config{}, newService(1, withSpecVersion(version)), tt.tasks, testNodes()))
			if !slices.Equal(got, tt.want) {
				t.Errorf("plan:\n  got  %q\n  want %q", got, tt.want)
			}
		})
	}
}

func TestReconcileWake(t *testing.T) {
	tests := []struct {
		name  string
		tasks []*api.Task
		want  time.Time
	}{
		{"nothing delayed", []*api.Task{newTask(1, running), newTask(2, running)}, time.Time{}},
		{"delayed task", []*api.Task{newTask(1, newState, notBefore(now.Add(3*time.Second))), newTask(2, running)}, now.Add(3 * time.Second)},
		{"earliest of two", []*api.Task{
			newTask(1, newState, notBefore(now.Add(3*time.Second))),
			newTask(2, newState, notBefore(now.Add(time.Second))),
		}, now.Add(time.Second)},
		{"delay passed", []*api.Task{newTask(1, newState, notBefore(now.Add(-time.Second))), newTask(2, running)}, time.Time{}},
		{"delay due now", []*api.Task{newTask(1, newState, notBefore(now)), newTask(2, running)}, time.Time{}},
		{"already promoted", []*api.Task{newTask(1, pending, notBefore(now.Add(time.Second))), newTask(2, running)}, time.Time{}},
		{"new restart delayed", []*api.Task{newTask(1, failed, neverStarted()), newTask(2, running)}, now.Add(100 * time.Millisecond)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Reconcile(now, Config{}, newService(2), tt.tasks, testNodes())
			if !p.Wake.Equal(tt.want) {
				t.Errorf("Wake = %v, want %v", p.Wake, tt.want)
			}
			if len(p.Create) == 0 && !p.Empty() {
				t.Errorf("a delayed task must not be touched: plan %q", describe(p))
			}
		})
	}
}

func TestReconcileDoesNotMutateInput(t *testing.T) {
	svc := newService(2, withSpecVersion(2))
	tasks := []*api.Task{
		newTask(1, failed),
		newTask(2, running, specVersion(2)),
		newTask(3, running),
		newTask(4, complete, desired(removeSt)),
	}
	nodes := testNodes()
	svcBefore := proto.Clone(svc)
	tasksBefore := cloneTasks(tasks)

	p := Reconcile(now, Config{}, svc, tasks, nodes)
	if p.Empty() {
		t.Fatal("test needs a plan that changes something")
	}
	if !proto.Equal(svc, svcBefore) {
		t.Error("Reconcile changed the service")
	}
	for i := range tasks {
		if !proto.Equal(tasks[i], tasksBefore[i]) {
			t.Errorf("Reconcile changed input task %d: %v", i, tasks[i])
		}
	}
	for _, u := range p.Update {
		if slices.Contains(tasks, u) {
			t.Errorf("Update holds an input task %s itself, not a clone", u.Id)
		}
	}
}

func TestPlanEmpty(t *testing.T) {
	tests := []struct {
		plan Plan
		want bool
	}{
		{Plan{}, true},
		{Plan{Wake: now}, true},
		{Plan{Create: []*api.Task{{}}}, false},
		{Plan{Update: []*api.Task{{}}}, false},
		{Plan{Remove: []*api.Task{{}}}, false},
	}
	for i, tt := range tests {
		if got := tt.plan.Empty(); got != tt.want {
			t.Errorf("case %d: Empty() = %v, want %v", i, got, tt.want)
		}
	}
}

// TestReconcileDrain: tasks on a drained node move, whatever the restart
// policy, without back-off; once stopped they are history.
func TestReconcileDrain(t *testing.T) {
	nodes := testNodes()
	nodes["drained"] = &api.Node{Id: "drained",
		Spec:   &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_DRAIN},
		Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}}
	never := func(s *api.Service) {
		s.Spec.Task.Restart = &api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_NONE}
	}
	svc := newService(2, never)
	tasks := []*api.Task{
		newTask(1, running, withID("a"), onNode("drained")),
		newTask(2, running, withID("b"), onNode(nodeReady)),
	}
	got := describe(Reconcile(now, Config{}, svc, tasks, nodes))
	want := []string{"create slot=1 restarts=0 step=0 delay=0s", "update a desired=shutdown"}
	if !slices.Equal(got, want) {
		t.Fatalf("plan:\n  got  %q\n  want %q", got, want)
	}
}
