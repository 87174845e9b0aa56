package orchestrator

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// updating returns a service of replicas whose image changed: spec
// version 2 rolling out with cfg, version 1 the previous spec.
func updating(replicas uint64, cfg *api.UpdateConfig, slots ...*api.UpdateSlot) *api.Service {
	old := newService(replicas)
	old.Meta = &api.Meta{Version: 1}
	api.ApplyServiceDefaults(old.Spec)
	spec := proto.CloneOf(old.Spec)
	spec.Task.Container.Image = "nginx:1.28"
	spec.Update = cfg
	api.ApplyServiceDefaults(spec)
	svc := Respec(now.Add(-time.Minute), old, spec)
	svc.UpdateStatus.Slots = slots
	return svc
}

func updateCfg(parallelism uint64, order api.UpdateOrder, action api.UpdateFailureAction, opts ...func(*api.UpdateConfig)) *api.UpdateConfig {
	c := &api.UpdateConfig{Parallelism: parallelism, Order: order, FailureAction: action, Monitor: durationpb.New(5 * time.Second)}
	for _, o := range opts {
		o(c)
	}
	return c
}

func withDelay(d time.Duration) func(*api.UpdateConfig) {
	return func(c *api.UpdateConfig) { c.Delay = durationpb.New(d) }
}

func withRatio(r float32) func(*api.UpdateConfig) {
	return func(c *api.UpdateConfig) { c.MaxFailureRatio = r }
}

const (
	stopFirst  = api.UpdateOrder_UPDATE_ORDER_STOP_FIRST
	startFirst = api.UpdateOrder_UPDATE_ORDER_START_FIRST
	pauseOn    = api.UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE
	continueOn = api.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE
	rollbackOn = api.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK
	starting   = api.UpdatePhase_UPDATE_PHASE_STARTING
	monitoring = api.UpdatePhase_UPDATE_PHASE_MONITORING
	failedPh   = api.UpdatePhase_UPDATE_PHASE_FAILED
)

func rec(slot uint64, taskID string, phase api.UpdatePhase, since time.Time) *api.UpdateSlot {
	return &api.UpdateSlot{Slot: slot, TaskId: taskID, Phase: phase, Since: timestamppb.New(since)}
}

// old is slot's running task of spec version 1, with id "oN".
func old(slot uint64) *api.Task {
	return newTask(slot, running, withID(fmt.Sprintf("o%d", slot)))
}

// fresh is slot's task of spec version 2, with id "nN".
func fresh(slot uint64, state api.TaskState, opts ...taskOpt) *api.Task {
	return newTask(slot, state, append([]taskOpt{withID(fmt.Sprintf("n%d", slot)), specVersion(2)}, opts...)...)
}

// slotsOf describes a rollout's slot records: "2:starting".
func slotsOf(st *api.UpdateStatus) []string {
	var out []string
	for _, r := range st.GetSlots() {
		out = append(out, fmt.Sprintf("%d:%s", r.GetSlot(), strings.ToLower(strings.TrimPrefix(r.GetPhase().String(), "UPDATE_PHASE_"))))
	}
	return out
}

func TestRolloutTable(t *testing.T) {
	tests := []struct {
		name  string
		svc   *api.Service
		tasks []*api.Task
		// want is the plan's task changes (describe); wantSlots the
		// rollout's slot records after it.
		want      []string
		wantSlots []string
		wantState api.UpdateState
		wantMsg   string // a part of the status message
		wantWake  time.Time
		// thenState, when set, is the state the next plan moves to; else
		// the next plan must be empty.
		thenState api.UpdateState
	}{
		{
			name:      "stop-first takes the first slot: old task shut down, new one made",
			svc:       updating(3, updateCfg(1, stopFirst, pauseOn)),
			tasks:     []*api.Task{old(1), old(2), old(3)},
			want:      []string{"create slot=1 restarts=0 step=0 delay=0s", "update o1 desired=shutdown"},
			wantSlots: []string{"1:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			name:      "parallelism 2 takes two slots, lowest first",
			svc:       updating(3, updateCfg(2, stopFirst, pauseOn)),
			tasks:     []*api.Task{old(3), old(1), old(2)},
			want:      []string{"create slot=1 restarts=0 step=0 delay=0s", "create slot=2 restarts=0 step=0 delay=0s", "update o1 desired=shutdown", "update o2 desired=shutdown"},
			wantSlots: []string{"1:starting", "2:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			name:      "parallelism 0 takes every slot at once",
			svc:       updating(3, updateCfg(0, stopFirst, pauseOn)),
			tasks:     []*api.Task{old(1), old(2), old(3)},
			want:      []string{"create slot=1 restarts=0 step=0 delay=0s", "create slot=2 restarts=0 step=0 delay=0s", "create slot=3 restarts=0 step=0 delay=0s", "update o1 desired=shutdown", "update o2 desired=shutdown", "update o3 desired=shutdown"},
			wantSlots: []string{"1:starting", "2:starting", "3:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			name:      "start-first makes the new task next to the old one",
			svc:       updating(2, updateCfg(1, startFirst, pauseOn)),
			tasks:     []*api.Task{old(1), old(2)},
			want:      []string{"create slot=1 restarts=0 step=0 delay=0s"},
			wantSlots: []string{"1:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			name:      "a slot whose new task does not run yet holds its place",
			svc:       updating(3, updateCfg(1, stopFirst, pauseOn), rec(1, "n1", starting, now.Add(-time.Second))),
			tasks:     []*api.Task{fresh(1, assigned), old(2), old(3)},
			wantSlots: []string{"1:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			name:      "once the new task runs, the next slot is taken and the first is monitored",
			svc:       updating(3, updateCfg(1, stopFirst, pauseOn), rec(1, "n1", starting, now.Add(-time.Second))),
			tasks:     []*api.Task{fresh(1, running), old(2), old(3)},
			want:      []string{"create slot=2 restarts=0 step=0 delay=0s", "update o2 desired=shutdown"},
			wantSlots: []string{"1:monitoring", "2:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
			wantWake:  now.Add(5 * time.Second),
		},
		{
			name:      "start-first: once the new task runs, the old one is shut down",
			svc:       updating(2, updateCfg(1, startFirst, pauseOn), rec(1, "n1", starting, now.Add(-time.Second))),
			tasks:     []*api.Task{old(1), fresh(1, running), old(2)},
			want:      []string{"create slot=2 restarts=0 step=0 delay=0s", "update o1 desired=shutdown"},
			wantSlots: []string{"1:monitoring", "2:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
			wantWake:  now.Add(5 * time.Second),
		},
		{
			name:      "the delay holds the place after the new task runs",
			svc:       updating(3, updateCfg(1, stopFirst, pauseOn, withDelay(10*time.Second)), rec(1, "n1", monitoring, now.Add(-2*time.Second))),
			tasks:     []*api.Task{fresh(1, running), old(2), old(3)},
			wantSlots: []string{"1:monitoring"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
			wantWake:  now.Add(3 * time.Second), // monitored; the delay ends at +8s
		},
		{
			name:      "after the monitor period the slot counts as updated",
			svc:       updating(2, updateCfg(1, stopFirst, pauseOn), rec(1, "n1", monitoring, now.Add(-5*time.Second)), rec(2, "n2", monitoring, now.Add(-time.Second))),
			tasks:     []*api.Task{fresh(1, running), fresh(2, running)},
			wantSlots: []string{"2:monitoring"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
			wantWake:  now.Add(4 * time.Second),
		},
		{
			name:      "the rollout completes when every slot is updated",
			svc:       updating(2, updateCfg(1, stopFirst, pauseOn), rec(2, "n2", monitoring, now.Add(-6*time.Second))),
			tasks:     []*api.Task{fresh(1, running), fresh(2, running)},
			wantState: api.UpdateState_UPDATE_STATE_COMPLETED,
			wantMsg:   "update completed",
		},
		{
			name: "a failed new task pauses the update, naming it and its error; the restart policy replaces it",
			svc:  updating(3, updateCfg(1, stopFirst, pauseOn), rec(1, "n1", starting, now.Add(-time.Second))),
			tasks: []*api.Task{fresh(1, failed, neverStarted(), func(t *api.Task) { t.Status.Err = "task: non-zero exit (1)" }),
				old(2), old(3)},
			want:      []string{"create slot=1 restarts=1 step=1 delay=100ms", "update n1 desired=shutdown"},
			wantSlots: []string{"1:failed"},
			wantState: api.UpdateState_UPDATE_STATE_PAUSED,
			wantMsg:   "update paused: task web.1.n1 failed: task: non-zero exit (1)",
			wantWake:  now.Add(100 * time.Millisecond),
		},
		{
			name:      "a task that fails while monitored is a failure too",
			svc:       updating(2, updateCfg(1, stopFirst, pauseOn), rec(1, "n1", monitoring, now.Add(-4*time.Second))),
			tasks:     []*api.Task{fresh(1, complete), old(2)},
			want:      []string{"create slot=1 restarts=1 step=0 delay=0s", "update n1 desired=shutdown"},
			wantSlots: []string{"1:failed"},
			wantState: api.UpdateState_UPDATE_STATE_PAUSED,
			wantMsg:   "task web.1.n1 complete",
		},
		{
			name:      "under the failure ratio the update goes on",
			svc:       updating(4, updateCfg(1, stopFirst, pauseOn, withRatio(0.25)), rec(1, "n1", starting, now.Add(-time.Second))),
			tasks:     []*api.Task{fresh(1, failed, neverStarted()), old(2), old(3), old(4)},
			want:      []string{"create slot=1 restarts=1 step=1 delay=100ms", "create slot=2 restarts=0 step=0 delay=0s", "update n1 desired=shutdown", "update o2 desired=shutdown"},
			wantSlots: []string{"1:failed", "2:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
			wantWake:  now.Add(100 * time.Millisecond),
		},
		{
			name:      "failure action continue goes on, and the failed slot is not taken again",
			svc:       updating(2, updateCfg(1, stopFirst, continueOn), rec(1, "n1", failedPh, now.Add(-time.Second))),
			tasks:     []*api.Task{fresh(1, newState, restarts(1)), old(2)},
			want:      []string{"create slot=2 restarts=0 step=0 delay=0s", "update o2 desired=shutdown"},
			wantSlots: []string{"1:failed", "2:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			name:      "start-first: a failed new task is shut down and the old one goes on serving",
			svc:       updating(2, updateCfg(1, startFirst, continueOn), rec(1, "n1", starting, now.Add(-time.Second))),
			tasks:     []*api.Task{old(1), fresh(1, failed), old(2)},
			want:      []string{"create slot=2 restarts=0 step=0 delay=0s", "update n1 desired=shutdown"},
			wantSlots: []string{"1:failed", "2:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			name:      "a paused update takes no slot",
			svc:       paused(updating(3, updateCfg(1, stopFirst, pauseOn), rec(1, "n1", failedPh, now.Add(-time.Second)))),
			tasks:     []*api.Task{fresh(1, running, restarts(1)), old(2), old(3)},
			wantSlots: []string{"1:failed"},
			wantState: api.UpdateState_UPDATE_STATE_PAUSED,
		},
		{
			name:      "a paused start-first update finishes the slots in flight",
			svc:       paused(updating(3, updateCfg(2, startFirst, pauseOn), rec(1, "n1", failedPh, now.Add(-time.Second)), rec(2, "n2", starting, now.Add(-time.Second)))),
			tasks:     []*api.Task{old(1), old(2), fresh(2, running), old(3)},
			want:      []string{"update o2 desired=shutdown"},
			wantSlots: []string{"1:failed", "2:monitoring"},
			wantState: api.UpdateState_UPDATE_STATE_PAUSED,
			wantWake:  now.Add(5 * time.Second),
		},
		{
			name:      "a slot scaled away leaves the rollout",
			svc:       updating(1, updateCfg(1, stopFirst, pauseOn), rec(2, "n2", starting, now.Add(-time.Second))),
			tasks:     []*api.Task{old(1), fresh(2, assigned)},
			want:      []string{"create slot=1 restarts=0 step=0 delay=0s", "update n2 desired=remove", "update o1 desired=shutdown"},
			wantSlots: []string{"1:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			name:      "a record whose task never reached the store is dropped and its slot taken again",
			svc:       updating(2, updateCfg(1, stopFirst, pauseOn), rec(1, "lost", starting, now.Add(-time.Second))),
			tasks:     []*api.Task{old(1), old(2)},
			want:      []string{"create slot=1 restarts=0 step=0 delay=0s", "update o1 desired=shutdown"},
			wantSlots: []string{"1:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			// Nothing serves there, so nothing to pace; the rollout
			// watches the new tasks all the same.
			name:      "stale tasks that do not run are replaced at once",
			svc:       updating(3, updateCfg(1, stopFirst, pauseOn)),
			tasks:     []*api.Task{newTask(1, assigned, withID("o1")), newTask(2, failed, withID("o2")), old(3)},
			want:      []string{"create slot=1 restarts=0 step=0 delay=0s", "create slot=2 restarts=0 step=0 delay=0s", "update o1 desired=shutdown", "update o2 desired=shutdown"},
			wantSlots: []string{"1:starting", "2:starting"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
		},
		{
			name:      "the rollout completes only once no slot's task is of the older template",
			svc:       updating(2, updateCfg(1, stopFirst, pauseOn)),
			tasks:     []*api.Task{fresh(1, running), newTask(1, assigned, withID("o1")), fresh(2, running)},
			want:      []string{"update o1 desired=shutdown"},
			wantState: api.UpdateState_UPDATE_STATE_UPDATING,
			thenState: api.UpdateState_UPDATE_STATE_COMPLETED,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := tt.svc
			api.ApplyServiceDefaults(svc.Spec)
			p := Reconcile(now, Config{}, svc, tt.tasks, testNodes())
			if got := describe(p); !slices.Equal(got, tt.want) {
				t.Errorf("plan:\n  got  %q\n  want %q", got, tt.want)
			}
			st := svc.GetUpdateStatus()
			if p.Service != nil {
				st = p.Service.GetUpdateStatus()
				if p.Service.GetMeta().GetVersion() != svc.GetMeta().GetVersion() {
					t.Errorf("planned service at version %d, want the one read (%d)", p.Service.GetMeta().GetVersion(), svc.GetMeta().GetVersion())
				}
			}
			if got := slotsOf(st); !slices.Equal(got, tt.wantSlots) {
				t.Errorf("slots %q, want %q", got, tt.wantSlots)
			}
			if st.GetState() != tt.wantState {
				t.Errorf("state %v, want %v (%s)", st.GetState(), tt.wantState, st.GetMessage())
			}
			if !strings.Contains(st.GetMessage(), tt.wantMsg) {
				t.Errorf("message %q, want it to contain %q", st.GetMessage(), tt.wantMsg)
			}
			if !p.Wake.Equal(tt.wantWake) {
				t.Errorf("wake %v, want %v", p.Wake, tt.wantWake)
			}
			for _, c := range p.Create {
				if c.GetSpec().GetContainer().GetImage() != svc.GetSpec().GetTask().GetContainer().GetImage() {
					t.Errorf("new task of slot %d runs %s", c.GetSlot(), c.GetSpec().GetContainer().GetImage())
				}
			}
			if p.Service != nil {
				after := apply(tt.tasks, p, now)
				p2 := Reconcile(now, Config{}, p.Service, after, testNodes())
				switch {
				case tt.thenState != 0:
					if got := p2.Service.GetUpdateStatus().GetState(); got != tt.thenState || len(describe(p2)) > 0 {
						t.Errorf("next plan %q moves to %v, want only a move to %v", describe(p2), got, tt.thenState)
					}
				case !p2.Empty():
					t.Errorf("not idempotent: second plan %q, service changed again: %v", describe(p2), p2.Service != nil)
				}
			}
		})
	}
}

func paused(svc *api.Service) *api.Service {
	svc.UpdateStatus.State = api.UpdateState_UPDATE_STATE_PAUSED
	return svc
}

// TestRolloutRollback checks the failure action rollback: the service
// returns to its previous spec and version in the same plan, only the
// slots already updated are rolled back (with the rollback config), and
// no previous spec is left to roll back to.
func TestRolloutRollback(t *testing.T) {
	svc := updating(4, updateCfg(1, stopFirst, rollbackOn), rec(2, "n2", starting, now.Add(-time.Second)))
	svc.Spec.Rollback = updateCfg(2, stopFirst, pauseOn)
	tasks := []*api.Task{fresh(1, running), fresh(2, failed, func(t *api.Task) { t.Status.Err = "bad image" }), old(3), old(4)}
	p := Reconcile(now, Config{}, svc, tasks, testNodes())
	rb := p.Service
	if rb == nil {
		t.Fatal("no service change planned")
	}
	if rb.GetSpecVersion() != 1 || rb.GetSpec().GetTask().GetContainer().GetImage() != "nginx:1.27" {
		t.Errorf("rolled back to version %d image %s, want 1 nginx:1.27", rb.GetSpecVersion(), rb.GetSpec().GetTask().GetContainer().GetImage())
	}
	if rb.GetPreviousSpec() != nil {
		t.Errorf("an automatic rollback left a previous spec: %v", rb.GetPreviousSpec())
	}
	st := rb.GetUpdateStatus()
	if st.GetState() != api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED || !strings.Contains(st.GetMessage(), "update rolled back: task web.2.n2 failed: bad image") {
		t.Errorf("status %v %q", st.GetState(), st.GetMessage())
	}
	if st.GetConfig().GetParallelism() != 2 {
		t.Errorf("rollback follows parallelism %d, want the rollback config's 2", st.GetConfig().GetParallelism())
	}
	// Slot 1 runs the new spec and is taken back (stop-first, parallelism
	// 2); slot 2's failed task is replaced at once by one of the old spec,
	// watched too; slots 3 and 4 never changed and are left alone.
	want := []string{"create slot=1 restarts=0 step=0 delay=0s", "create slot=2 restarts=0 step=0 delay=0s", "update n1 desired=shutdown", "update n2 desired=shutdown"}
	if got := describe(p); !slices.Equal(got, want) {
		t.Errorf("plan:\n  got  %q\n  want %q", got, want)
	}
	for _, c := range p.Create {
		if c.GetSpecVersion() != 1 {
			t.Errorf("slot %d's new task has spec version %d, want 1", c.GetSlot(), c.GetSpecVersion())
		}
	}
	if got := slotsOf(st); !slices.Equal(got, []string{"1:starting", "2:starting"}) {
		t.Errorf("rollback slots %q", got)
	}

	// A rollback whose new task fails pauses: it is never rolled back.
	after := apply(tasks, p, now)
	for i, tk := range after {
		if tk.GetSlot() == 1 && tk.GetSpecVersion() == 1 {
			c := proto.CloneOf(tk)
			c.Status = &api.TaskStatus{State: failed, Err: "still bad", Timestamp: timestampAt(now)}
			c.NodeId = nodeReady
			after[i] = c
		}
	}
	p2 := Reconcile(now.Add(time.Second), Config{}, rb, after, testNodes())
	st2 := p2.Service.GetUpdateStatus()
	if st2.GetState() != api.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED || !strings.Contains(st2.GetMessage(), "rollback paused: task web.1.") {
		t.Errorf("failed rollback: %v %q", st2.GetState(), st2.GetMessage())
	}
	if p2.Service.GetSpecVersion() != 1 {
		t.Errorf("a failed rollback changed the spec version to %d", p2.Service.GetSpecVersion())
	}
}

// TestRolloutWithoutPreviousSpec: the failure action rollback on a service
// that has nothing to return to pauses and says so.
func TestRolloutWithoutPreviousSpec(t *testing.T) {
	svc := updating(2, updateCfg(1, stopFirst, rollbackOn), rec(1, "n1", starting, now.Add(-time.Second)))
	svc.PreviousSpec = nil
	p := Reconcile(now, Config{}, svc, []*api.Task{fresh(1, failed), old(2)}, testNodes())
	st := p.Service.GetUpdateStatus()
	if st.GetState() != api.UpdateState_UPDATE_STATE_PAUSED || !strings.Contains(st.GetMessage(), "no previous spec") {
		t.Errorf("status %v %q", st.GetState(), st.GetMessage())
	}
}

// TestRolloutStartsForUnrecordedVersion: stale tasks and no rollout of the
// service's version (a service stored before rollouts, or a status of an
// older version) start one with the spec's update config.
func TestRolloutStartsForUnrecordedVersion(t *testing.T) {
	svc := newService(2, withSpecVersion(2))
	svc.Spec.Update = updateCfg(1, startFirst, pauseOn)
	p := Reconcile(now, Config{}, svc, []*api.Task{old(1), old(2)}, testNodes())
	st := p.Service.GetUpdateStatus()
	if st.GetState() != api.UpdateState_UPDATE_STATE_UPDATING || st.GetSpecVersion() != 2 || st.GetConfig().GetOrder() != startFirst {
		t.Errorf("status %v", st)
	}
	if got := describe(p); !slices.Equal(got, []string{"create slot=1 restarts=0 step=0 delay=0s"}) {
		t.Errorf("plan %q", got)
	}
	// Without stale tasks nothing is recorded.
	if p := Reconcile(now, Config{}, newService(2), []*api.Task{old(1), old(2)}, testNodes()); !p.Empty() {
		t.Errorf("up-to-date service: plan %q service %v", describe(p), p.Service)
	}
}

func TestTemplateChanged(t *testing.T) {
	base := func() *api.ServiceSpec {
		s := newService(3).Spec
		s.Networks = []string{"a", "b"}
		s.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{Target: 80, Published: 8080}}}
		return s
	}
	tests := []struct {
		name   string
		change func(s *api.ServiceSpec)
		want   bool
	}{
		{"nothing", func(*api.ServiceSpec) {}, false},
		{"replicas", func(s *api.ServiceSpec) { s.GetReplicated().Replicas = 9 }, false},
		{"labels", func(s *api.ServiceSpec) { s.Labels = map[string]string{"a": "b"} }, false},
		{"update config", func(s *api.ServiceSpec) { s.Update = updateCfg(3, startFirst, continueOn) }, false},
		{"published port number", func(s *api.ServiceSpec) { s.Endpoint.Ports[0].Published = 9090 }, false},
		{"networks reordered", func(s *api.ServiceSpec) { s.Networks = []string{"b", "a"} }, false},
		{"image", func(s *api.ServiceSpec) { s.Task.Container.Image = "other" }, true},
		{"env", func(s *api.ServiceSpec) { s.Task.Container.Env = []string{"A=1"} }, true},
		{"restart policy", func(s *api.ServiceSpec) { s.Task.Restart = &api.RestartPolicy{MaxAttempts: 1} }, true},
		{"force", func(s *api.ServiceSpec) { s.Task.ForceUpdate++ }, true},
		{"network added", func(s *api.ServiceSpec) { s.Networks = append(s.Networks, "c") }, true},
		{"no longer publishing", func(s *api.ServiceSpec) { s.Endpoint = nil }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base()
			tt.change(s)
			if got := TemplateChanged(base(), s); got != tt.want {
				t.Errorf("TemplateChanged = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestRespecAndRollback checks the spec bookkeeping of updates and manual
// rollbacks: versions only grow, a rollback restores the previous version
// and swaps the specs, and a second rollback undoes the first.
func TestRespecAndRollback(t *testing.T) {
	svc := newService(1)
	svc.Meta = &api.Meta{Version: 7}
	if _, err := Rollback(now, svc, "x", true); err != ErrNoPreviousSpec {
		t.Fatalf("rollback of a service never updated: %v", err)
	}
	image := func(s *api.Service) string { return s.GetSpec().GetTask().GetContainer().GetImage() }
	spec := proto.CloneOf(svc.Spec)
	spec.Task.Container.Image = "v2"
	v2 := Respec(now, svc, spec)
	if v2.GetSpecVersion() != 8 || v2.GetPreviousSpecVersion() != 1 || image(v2) != "v2" || v2.GetPreviousSpec().GetTask().GetContainer().GetImage() != "nginx:1.27" {
		t.Fatalf("update: version %d previous %d image %s", v2.GetSpecVersion(), v2.GetPreviousSpecVersion(), image(v2))
	}
	if st := v2.GetUpdateStatus(); st.GetState() != api.UpdateState_UPDATE_STATE_UPDATING || st.GetSpecVersion() != 8 {
		t.Errorf("update status %v", st)
	}
	if svc.GetPreviousSpec() != nil || image(svc) != "nginx:1.27" {
		t.Error("Respec modified its input")
	}

	v2.Meta.Version = 9
	back, err := Rollback(now, v2, "manually requested rollback", true)
	if err != nil {
		t.Fatal(err)
	}
	if back.GetSpecVersion() != 1 || image(back) != "nginx:1.27" || back.GetPreviousSpecVersion() != 8 || back.GetPreviousSpec().GetTask().GetContainer().GetImage() != "v2" {
		t.Errorf("rollback: version %d image %s previous %d", back.GetSpecVersion(), image(back), back.GetPreviousSpecVersion())
	}
	if st := back.GetUpdateStatus(); st.GetState() != api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED || st.GetSpecVersion() != 1 {
		t.Errorf("rollback status %v", st)
	}
	again, err := Rollback(now, back, "", true)
	if err != nil || again.GetSpecVersion() != 8 || image(again) != "v2" {
		t.Errorf("second rollback: version %d image %s err %v", again.GetSpecVersion(), image(again), err)
	}

	// A labels change keeps the version and starts no rollout, but is
	// what a rollback returns to.
	labels := proto.CloneOf(back.Spec)
	labels.Labels = map[string]string{"a": "b"}
	back.Meta.Version = 12
	l := Respec(now, back, labels)
	if l.GetSpecVersion() != 1 || !proto.Equal(l.GetUpdateStatus(), back.GetUpdateStatus()) || l.GetPreviousSpec().GetLabels() != nil {
		t.Errorf("labels change: version %d status %v", l.GetSpecVersion(), l.GetUpdateStatus())
	}
	// The next template change is above every version seen (8 included).
	l.Meta.Version = 13
	spec = proto.CloneOf(l.Spec)
	spec.Task.Container.Image = "v3"
	if v3 := Respec(now, l, spec); v3.GetSpecVersion() != 14 {
		t.Errorf("next version %d, want 14", v3.GetSpecVersion())
	}
}
