package orchestrator

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func replicatedJob(total, concurrent uint64, opts ...svcOpt) *api.Service {
	s := newService(0, opts...)
	s.Spec.Mode = &api.ServiceSpec_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{TotalCompletions: total, MaxConcurrent: concurrent}}
	return s
}

func TestReconcileReplicatedJob(t *testing.T) {
	onFailure := withRestart(&api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_ON_FAILURE})
	tests := []struct {
		name  string
		svc   *api.Service
		tasks []*api.Task
		want  []string
	}{
		{
			name: "a new job starts max_concurrent slots, lowest first",
			svc:  replicatedJob(5, 2),
			want: []string{"create slot=1 restarts=0 step=0 delay=0s", "create slot=2 restarts=0 step=0 delay=0s"},
		},
		{
			name: "max_concurrent 0 runs every completion at once",
			svc:  replicatedJob(3, 0),
			want: []string{"create slot=1 restarts=0 step=0 delay=0s", "create slot=2 restarts=0 step=0 delay=0s", "create slot=3 restarts=0 step=0 delay=0s"},
		},
		{
			name:  "a completed slot lets the next one start, and is never run again",
			svc:   replicatedJob(5, 2, withRestart(&api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_ANY})),
			tasks: []*api.Task{newTask(1, complete, withID("t1")), newTask(2, running)},
			want:  []string{"create slot=3 restarts=0 step=0 delay=0s", "update t1 desired=shutdown"},
		},
		{
			name: "all completed: nothing more",
			svc:  replicatedJob(2, 1),
			tasks: []*api.Task{
				newTask(1, complete, desired(shutdown)), newTask(2, complete, desired(shutdown)),
			},
		},
		{
			name:  "a failed task is replaced in its slot with the back-off, within the concurrency",
			svc:   replicatedJob(4, 2, onFailure),
			tasks: []*api.Task{newTask(1, failed, withID("t1"), neverStarted()), newTask(2, running)},
			want:  []string{"create slot=1 restarts=1 step=1 delay=100ms", "update t1 desired=shutdown"},
		},
		{
			name: "a failed slot the policy gives up on frees its place",
			svc:  replicatedJob(3, 1, withRestart(&api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_NONE})),
			tasks: []*api.Task{
				newTask(1, failed, desired(shutdown)),
			},
			want: []string{"create slot=2 restarts=0 step=0 delay=0s"},
		},
		{
			name: "max attempts reached: the slot stays failed",
			svc:  replicatedJob(2, 2, withRestart(&api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_ON_FAILURE, MaxAttempts: 1})),
			tasks: []*api.Task{
				newTask(1, failed, desired(shutdown), restarts(1)), newTask(2, complete, desired(shutdown)),
			},
		},
		{
			name: "a new spec runs the job again: old tasks stop, slots start over",
			svc:  replicatedJob(3, 2, withSpecVersion(2)),
			tasks: []*api.Task{
				newTask(1, complete, desired(shutdown)), newTask(2, running, withID("t2")), newTask(3, pending, withID("t3")),
			},
			want: []string{
				"create slot=1 restarts=0 step=0 delay=0s", "create slot=2 restarts=0 step=0 delay=0s",
				"remove t3", "update t2 desired=shutdown",
			},
		},
		{
			name: "fewer completions drop the slots above",
			svc:  replicatedJob(1, 1),
			tasks: []*api.Task{
				newTask(1, complete, desired(shutdown)), newTask(2, running, withID("t2")), newTask(3, complete, withID("t3"), desired(shutdown)),
			},
			want: []string{"remove t3", "update t2 desired=remove"},
		},
		{
			name:  "a task on a lost node is replaced as a failure",
			svc:   replicatedJob(1, 1, onFailure),
			tasks: []*api.Task{newTask(1, running, withID("t1"), onNode(nodeDown))},
			want:  []string{"create slot=1 restarts=1 step=0 delay=0s", "update t1 desired=shutdown"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Reconcile(now, Config{}, tt.svc, tt.tasks, testNodes())
			if got := describe(p); !slices.Equal(got, tt.want) {
				t.Fatalf("plan\n got %q\nwant %q", got, tt.want)
			}
			after := apply(tt.tasks, p, now)
			if p2 := Reconcile(now, Config{}, tt.svc, after, testNodes()); !p2.Empty() {
				t.Fatalf("not idempotent: second plan %q", describe(p2))
			}
		})
	}
}

// TestReplicatedJobRunsToCompletion runs a job with flaky tasks: every
// task either exits 0 or fails, and failed ones are retried. The job must
// end with exactly total completions, one per slot, never more than
// max_concurrent tasks running at once, and no completed task run again.
func TestReplicatedJobRunsToCompletion(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 5))
		total, concurrent := uint64(1+rng.IntN(12)), uint64(1+rng.IntN(4))
		svc := replicatedJob(total, concurrent, withRestart(&api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_ON_FAILURE}))
		var tasks []*api.Task
		clock := now
		for round := 0; ; round++ {
			if round > 1000 {
				t.Fatalf("seed %d: job never finished\n%s", seed, dumpTasks(tasks))
			}
			p := Reconcile(clock, Config{}, svc, tasks, testNodes())
			tasks = apply(tasks, p, clock)
			active, done := 0, map[uint64]int{}
			for i, tk := range tasks {
				if tk.DesiredState == running && !terminal(tk) {
					active++
					// The task runs now and ends: 0 or a failure.
					tk = cloneTasks([]*api.Task{tk})[0]
					tk.NodeId = nodeReady
					tk.Status.State = []api.TaskState{complete, failed}[rng.IntN(2)]
					tk.Status.Timestamp = timestamppb.New(clock)
					tasks[i] = tk
				}
				if tk.Status.GetState() == complete {
					done[tk.Slot]++
				}
			}
			if uint64(active) > concurrent {
				t.Fatalf("seed %d: %d tasks running at once, max_concurrent %d", seed, active, concurrent)
			}
			for slot, n := range done {
				if n > 1 || slot < 1 || slot > total {
					t.Fatalf("seed %d: slot %d completed %d times", seed, slot, n)
				}
			}
			if uint64(len(done)) == total && p.Empty() && active == 0 {
				break
			}
			clock = clock.Add(time.Minute) // past any back-off
		}
	}
}

// TestReconcileJobIdempotent: random messy task lists for a replicated
// job, as TestReconcileIdempotent does for replicated services.
func TestReconcileJobIdempotent(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 3000 {
		_, tasks, nodes, cfg := randomCase(rng)
		svc := replicatedJob(uint64(1+rng.IntN(6)), uint64(rng.IntN(4)), withSpecVersion(uint64(1+rng.IntN(3))),
			withRestart(&api.RestartPolicy{Condition: api.RestartCondition(rng.IntN(4)), MaxAttempts: uint64(rng.IntN(3))}))
		p := Reconcile(now, cfg, svc, tasks, nodes)
		after := apply(tasks, p, now)
		j := svc.Spec.GetReplicatedJob()
		limit := j.MaxConcurrent
		if limit == 0 {
			limit = j.TotalCompletions
		}
		started := 0
		for _, tk := range p.Create {
			if tk.RestartCount == 0 && tk.Slot >= 1 {
				started++
			}
			if tk.Slot < 1 || tk.Slot > j.TotalCompletions {
				t.Fatalf("case %d: created a task in slot %d of %d", i, tk.Slot, j.TotalCompletions)
			}
		}
		if uint64(started) > limit {
			t.Fatalf("case %d: started %d slots at once, max_concurrent %d", i, started, limit)
		}
		for slot, rs := range runnableBySlot(after) {
			if len(rs) > 1 {
				t.Fatalf("case %d: slot %d has %d tasks desired RUNNING", i, slot, len(rs))
			}
		}
		if p2 := Reconcile(now, cfg, svc, after, nodes); !p2.Empty() {
			t.Fatalf("case %d: not idempotent\ntasks:\n%s\nfirst plan: %q\nsecond plan: %q", i, dumpTasks(tasks), describe(p), describe(p2))
		}
	}
}
