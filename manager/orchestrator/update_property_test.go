package orchestrator

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// simStep is the simulated time between two reconciliations.
const simStep = 500 * time.Millisecond

// simOutcome is what becomes of a task once it has a node.
type simOutcome struct {
	startSteps int  // steps from assigned to running (or failed)
	fails      bool // fails instead of running
	lateSteps  int  // > 0: fails this many steps after it ran
}

// rolloutSim is a service being updated from version 1 to 2 on a cluster
// the test plays: nodes assign, start, fail and stop tasks as the
// outcomes say, and the leader may die between the two commands of a
// plan (the service's status committed, its tasks not).
type rolloutSim struct {
	t        *testing.T
	name     string
	rng      *rand.Rand
	svc      *api.Service
	tasks    []*api.Task
	clock    time.Time
	outcomes map[string]simOutcome
	ranSince map[string]int // steps a task has been running
	pending  map[string]int // steps a task has been assigned
	pFail    float64
	late     bool
	// badRollback: tasks of the old spec made during the case fail too,
	// half of them.
	badRollback bool
	// parallelism is the update's.
	parallelism uint64
	// taken counts, per rollout (its start and version) and slot, the
	// tasks the rollout made: more than one is a slot updated twice.
	taken map[string]map[string]bool
}

// TestRolloutProperties drives random rollouts (update configs, task
// outcomes, restart policies, failure actions, leader crashes) to their
// end and checks what users are promised:
//
//   - stop-first: never more than parallelism slots down because of the
//     update (slots whose new task failed are the failure's, not the
//     update's), plus the rollback's own parallelism while it rolls back;
//   - start-first: never fewer than replicas slots serving, while new
//     tasks either come up or fail before serving;
//   - no slot is taken twice by one rollout, leader crashes included;
//   - every rollout ends (completed, paused or rolled back), and one
//     without failures leaves every slot serving the new spec.
func TestRolloutProperties(t *testing.T) {
	cases := 1500
	// ROLLOUT_CASES=N runs more (or fewer) cases, for a longer search.
	if n := os.Getenv("ROLLOUT_CASES"); n != "" {
		cases, _ = strconv.Atoi(n)
	}
	if testing.Short() {
		cases = 200
	}
	rng := rand.New(rand.NewPCG(10, 20))
	ends := map[api.UpdateState]int{}
	for i := range cases {
		ends[newRolloutSim(t, i, rng).run()]++
	}
	// The cases must reach every way a rollout ends, or they test little.
	for _, st := range []api.UpdateState{api.UpdateState_UPDATE_STATE_COMPLETED, api.UpdateState_UPDATE_STATE_PAUSED,
		api.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, api.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED} {
		if ends[st] == 0 {
			t.Errorf("no case ended %v: %v", st, ends)
		}
	}
}

func newRolloutSim(t *testing.T, i int, rng *rand.Rand) *rolloutSim {
	orders := []api.UpdateOrder{stopFirst, startFirst}
	order := orders[rng.IntN(2)]
	durations := []time.Duration{0, time.Second, 3 * time.Second}
	ratios := []float32{0, 0.3, 1}
	cfg := updateCfg(uint64(rng.IntN(4)), order, []api.UpdateFailureAction{pauseOn, continueOn, rollbackOn}[rng.IntN(3)],
		withDelay(durations[rng.IntN(3)]), withRatio(ratios[rng.IntN(3)]))
	cfg.Monitor = durationpb.New(durations[rng.IntN(3)])
	replicas := uint64(1 + rng.IntN(6))
	svc := updating(replicas, cfg)
	svc.Spec.Rollback = updateCfg(uint64(rng.IntN(3)), order, []api.UpdateFailureAction{pauseOn, continueOn}[rng.IntN(2)])
	policy := &api.RestartPolicy{Condition: api.RestartCondition(1 + rng.IntN(3))}
	svc.Spec.Task.Restart = policy
	svc.PreviousSpec.Task.Restart = policy
	s := &rolloutSim{
		t: t, rng: rng, svc: svc, clock: now,
		outcomes: map[string]simOutcome{}, ranSince: map[string]int{}, pending: map[string]int{},
		pFail:       []float64{0, 0.3, 1}[rng.IntN(3)],
		late:        order == stopFirst && rng.IntN(3) == 0,
		badRollback: rng.IntN(6) == 0,
		taken:       map[string]map[string]bool{},
		parallelism: cfg.GetParallelism(),
	}
	s.name = fmt.Sprintf("case %d: replicas %d, update {%s}, rollback {%s}, restart %v, p(fail) %.1f, late failures %v, bad rollback %v",
		i, replicas, formatConfig(cfg), formatConfig(svc.Spec.Rollback), policy.Condition, s.pFail, s.late, s.badRollback)
	for slot := uint64(1); slot <= replicas; slot++ {
		t := old(slot)
		t.Meta.CreatedAt = timestamppb.New(now.Add(-time.Hour)) // before the update
		s.tasks = append(s.tasks, t)
	}
	return s
}

// run plays the rollout to its end and returns how it ended.
func (s *rolloutSim) run() api.UpdateState {
	const maxSteps = 2000
	ended := -1
	for step := 0; step < maxSteps; step++ {
		p := Reconcile(s.clock, Config{}, s.svc, s.tasks, testNodes())
		crash := s.rng.IntN(20) == 0
		if p.Service != nil {
			s.svc = proto.CloneOf(p.Service)
			s.svc.Meta.Version++
		}
		if !crash {
			s.tasks = apply(s.tasks, p, s.clock)
			s.noteTaken(p)
		}
		s.evolve()
		s.clock = s.clock.Add(simStep)
		s.checkServing()
		if s.over() {
			if ended < 0 {
				ended = step
			}
			if step-ended > 40 { // and it stays over
				s.checkEnd()
				return s.state()
			}
		}
	}
	s.t.Fatalf("%s: rollout still %v after %d steps: %s\n%s", s.name, s.state(), maxSteps, s.svc.GetUpdateStatus().GetMessage(), dumpTasks(s.tasks))
	return 0
}

func (s *rolloutSim) state() api.UpdateState { return s.svc.GetUpdateStatus().GetState() }

func (s *rolloutSim) over() bool {
	switch s.state() {
	case api.UpdateState_UPDATE_STATE_UPDATING, api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED:
		return false
	}
	for _, r := range s.svc.GetUpdateStatus().GetSlots() {
		if r.GetPhase() != failedPh {
			return false // a paused rollout finishes the slots in flight
		}
	}
	return true
}

// noteTaken records the tasks a rollout made (restart count 0, the
// rollout's version, made since it started) and fails on a second one in
// a slot.
func (s *rolloutSim) noteTaken(p Plan) {
	st := s.svc.GetUpdateStatus()
	key := fmt.Sprintf("%v@%d", st.GetStartedAt().AsTime(), st.GetSpecVersion())
	for _, c := range p.Create {
		if c.GetRestartCount() != 0 || c.GetSpecVersion() != st.GetSpecVersion() {
			continue
		}
		if s.taken[key] == nil {
			s.taken[key] = map[string]bool{}
		}
		slot := fmt.Sprint(c.GetSlot())
		if s.taken[key][slot] {
			s.t.Fatalf("%s: slot %s updated twice by the rollout of version %d (plan %q, status %v)\n%s", s.name, slot, st.GetSpecVersion(), describe(p), st, dumpTasks(s.tasks))
		}
		s.taken[key][slot] = true
	}
}

// evolve plays the nodes for one step.
func (s *rolloutSim) evolve() {
	ts := timestamppb.New(s.clock)
	for i, t := range s.tasks {
		if api.IsTerminal(t.GetStatus().GetState()) {
			continue
		}
		c := proto.CloneOf(t)
		switch st := c.GetStatus().GetState(); {
		case c.GetDesiredState() > running:
			if c.GetNodeId() == "" {
				continue
			}
			c.Status = &api.TaskStatus{State: shutdown, Timestamp: ts, StartedAt: c.GetStatus().GetStartedAt()}
		case st == newState:
			if nb := c.GetNotBefore(); nb != nil && nb.AsTime().After(s.clock) {
				continue
			}
			c.NodeId = nodeReady
			c.Status = &api.TaskStatus{State: assigned, Timestamp: ts}
		case st == assigned:
			o := s.outcome(c)
			s.pending[c.GetId()]++
			if s.pending[c.GetId()] < o.startSteps {
				continue
			}
			if o.fails {
				c.Status = &api.TaskStatus{State: failed, Err: "exit 1", Timestamp: ts}
			} else {
				c.Status = &api.TaskStatus{State: running, Timestamp: ts, StartedAt: ts}
			}
		case st == running:
			o := s.outcome(c)
			s.ranSince[c.GetId()]++
			if o.lateSteps == 0 || s.ranSince[c.GetId()] < o.lateSteps {
				continue
			}
			c.Status = &api.TaskStatus{State: failed, Err: "exit 2", Timestamp: ts, StartedAt: c.GetStatus().GetStartedAt()}
		default:
			continue
		}
		s.tasks[i] = c
	}
}

// outcome draws a task's fate once: tasks of the new spec (2) fail as
// the case says; the old spec works, but in a case of bad rollbacks.
func (s *rolloutSim) outcome(t *api.Task) simOutcome {
	if o, ok := s.outcomes[t.GetId()]; ok {
		return o
	}
	o := simOutcome{startSteps: 1 + s.rng.IntN(3)}
	if t.GetSpecVersion() == 1 {
		o.fails = s.badRollback && t.GetStatus().GetState() != running && s.rng.IntN(2) == 0
	} else if s.rng.Float64() < s.pFail {
		o.fails = true
		if s.late && s.rng.IntN(2) == 0 {
			o.fails, o.lateSteps = false, 1+s.rng.IntN(8)
		}
	}
	s.outcomes[t.GetId()] = o
	return o
}

// serving returns the slots with a task that serves (running and meant
// to), and the slots that had a task of the new spec fail.
func (s *rolloutSim) serving() (up, failedSlots map[uint64]bool) {
	up, failedSlots = map[uint64]bool{}, map[uint64]bool{}
	for _, t := range s.tasks {
		if t.GetStatus().GetState() == running && t.GetDesiredState() == running {
			up[t.GetSlot()] = true
		}
		if o := s.outcomes[t.GetId()]; t.GetStatus().GetState() == failed || o.fails || o.lateSteps > 0 {
			failedSlots[t.GetSlot()] = true
		}
	}
	return up, failedSlots
}

func (s *rolloutSim) checkServing() {
	replicas := s.svc.GetSpec().GetReplicated().GetReplicas()
	up, failedSlots := s.serving()
	st := s.svc.GetUpdateStatus()
	if st.GetConfig().GetOrder() == startFirst {
		if uint64(len(up)) < replicas && !s.late {
			s.t.Fatalf("%s: start-first: %d of %d slots serving\n%s", s.name, len(up), replicas, dumpTasks(s.tasks))
		}
		return
	}
	limit := st.GetConfig().GetParallelism()
	if st.GetSpecVersion() == 1 && limit > 0 {
		// Rolling back: the update's own slots in flight are down too
		// until the rollback replaces them.
		limit += s.parallelism
		if s.parallelism == 0 {
			limit = 0
		}
	}
	if limit == 0 {
		return
	}
	down := 0
	for slot := uint64(1); slot <= replicas; slot++ {
		if !up[slot] && !failedSlots[slot] {
			down++
		}
	}
	if uint64(down) > limit {
		s.t.Fatalf("%s: stop-first: %d slots down, parallelism allows %d (state %v)\n%s", s.name, down, limit, s.state(), dumpTasks(s.tasks))
	}
}

func (s *rolloutSim) checkEnd() {
	st := s.svc.GetUpdateStatus()
	up, _ := s.serving()
	replicas := s.svc.GetSpec().GetReplicated().GetReplicas()
	if s.pFail == 0 && (st.GetState() != api.UpdateState_UPDATE_STATE_COMPLETED || st.GetUpdated() != replicas) {
		s.t.Fatalf("%s: no task failed, yet the rollout ended %v with %d of %d slots updated: %s", s.name, st.GetState(), st.GetUpdated(), replicas, st.GetMessage())
	}
	if st.GetFailures() > 0 || s.late {
		return // tasks failing after their monitor period are not the rollout's
	}
	switch st.GetState() {
	case api.UpdateState_UPDATE_STATE_COMPLETED, api.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED:
	default:
		s.t.Fatalf("%s: rollout without failures ended %v: %s", s.name, st.GetState(), st.GetMessage())
	}
	if uint64(len(up)) != replicas {
		s.t.Fatalf("%s: %d of %d slots serve after the rollout\n%s", s.name, len(up), replicas, dumpTasks(s.tasks))
	}
	for _, t := range s.tasks {
		if t.GetDesiredState() == running && t.GetSpecVersion() != s.svc.GetSpecVersion() {
			s.t.Fatalf("%s: task %s of version %d still meant to run after the rollout of %d (%v)\n%s", s.name, t.GetId(), t.GetSpecVersion(), s.svc.GetSpecVersion(), st, dumpTasks(s.tasks))
		}
	}
}

// formatConfig is an update config on one line, for case names.
func formatConfig(c *api.UpdateConfig) string {
	return fmt.Sprintf("parallelism %d, delay %s, order %s, monitor %s, on failure %s (max ratio %g)",
		c.GetParallelism(), c.GetDelay().AsDuration(), api.UpdateOrderName(c.GetOrder()), c.GetMonitor().AsDuration(),
		api.FailureActionName(c.GetFailureAction()), c.GetMaxFailureRatio())
}
