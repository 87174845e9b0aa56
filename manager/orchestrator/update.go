package orchestrator

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// maxSlotsPerStep bounds the slots one plan takes into a rollout, so that
// their tasks (a create and a shutdown each) and the service's status fit
// in one raft command and are committed together.
const maxSlotsPerStep = 500

// ErrNoPreviousSpec: a rollback of a service that has no spec to return to.
var ErrNoPreviousSpec = errors.New("no previous spec")

// TemplateChanged reports whether a change of spec changes what its tasks
// are made from, which is what replaces tasks: the task spec, the
// networks the tasks join (an address on each), and whether the service
// publishes ports (which joins its tasks to the ingress network). Replicas,
// labels, the update configs and the ports' numbers change no task.
func TemplateChanged(old, new *api.ServiceSpec) bool {
	networks := func(s *api.ServiceSpec) []string {
		n := slices.Clone(s.GetNetworks())
		slices.Sort(n)
		return slices.Compact(n)
	}
	return !proto.Equal(old.GetTask(), new.GetTask()) ||
		!slices.Equal(networks(old), networks(new)) ||
		(len(old.GetEndpoint().GetPorts()) > 0) != (len(new.GetEndpoint().GetPorts()) > 0)
}

// Respec returns cur with spec as its spec, as an update of the service
// stores it: the spec it replaces becomes the previous one and, when the
// task template changed, the service gets a new spec_version and a
// rolling update starts (following spec.update). cur is not modified.
func Respec(now time.Time, cur *api.Service, spec *api.ServiceSpec) *api.Service {
	upd := proto.CloneOf(cur)
	upd.Spec = spec
	upd.PreviousSpec = proto.CloneOf(cur.GetSpec())
	upd.PreviousSpecVersion = cur.GetSpecVersion()
	if TemplateChanged(cur.GetSpec(), spec) {
		// Above every version the service ever had: each was taken from
		// an earlier, lower meta.version (a raft index), or restored.
		upd.SpecVersion = max(cur.GetSpecVersion(), cur.GetPreviousSpecVersion(), cur.GetMeta().GetVersion()) + 1
		upd.UpdateStatus = newRollout(now, api.UpdateState_UPDATE_STATE_UPDATING, upd.SpecVersion, spec.GetUpdate(), "update in progress")
	}
	return upd
}

// Rollback returns cur with its previous spec (and spec_version) back,
// and a rollout of it started that follows the rollback config of the spec
// it leaves, with why as its message. manual says the user asked: the spec
// left becomes the previous one, so that a second rollback undoes the
// first, as in Swarm. A rollback the failure action takes leaves no
// previous spec: rolling back to the spec that failed would be no way back.
// cur is not modified.
func Rollback(now time.Time, cur *api.Service, why string, manual bool) (*api.Service, error) {
	if cur.GetPreviousSpec() == nil {
		return nil, ErrNoPreviousSpec
	}
	upd := proto.CloneOf(cur)
	upd.Spec, upd.SpecVersion = proto.CloneOf(cur.GetPreviousSpec()), cur.GetPreviousSpecVersion()
	upd.PreviousSpec, upd.PreviousSpecVersion = nil, 0
	if manual {
		upd.PreviousSpec, upd.PreviousSpecVersion = proto.CloneOf(cur.GetSpec()), cur.GetSpecVersion()
	}
	upd.UpdateStatus = newRollout(now, api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED, upd.SpecVersion, cur.GetSpec().GetRollback(), why)
	return upd, nil
}

// newRollout is the status of a rollout that starts now.
func newRollout(now time.Time, state api.UpdateState, version uint64, cfg *api.UpdateConfig, msg string) *api.UpdateStatus {
	if cfg == nil {
		cfg = api.DefaultUpdateConfig()
	}
	return &api.UpdateStatus{
		State:       state,
		StartedAt:   timestamppb.New(now),
		Message:     msg,
		SpecVersion: version,
		Config:      proto.CloneOf(cfg),
	}
}

// rollout moves the service's rolling update along, in the same plan as
// the rest of the reconciliation. Like Swarm's updater it takes the stale
// slots (those a task of an older template serves) parallelism at a
// time in slot order: stop-first shuts the old task down and makes the
// new one; start-first makes the new one next to it (reconcileSlot shuts
// the old one down once the new one serves). A slot frees its place for
// the next once its new task runs (plus the delay), and counts as
// updated once it ran for the monitor period; a new task that ends
// before is a failure, and too many failures take the failure action.
//
// Everything it knows is in the service's update_status and the tasks,
// both in raft: a new leader goes on from there, never taking a slot
// twice (a slot is taken when stale, and its record stays until it is
// done with). Timings count from when the leader saw a change (its
// clock), not from the nodes' clocks.
func (r *reconciler) rollout(tasks []*api.Task, slots map[uint64]*slot) {
	orig := r.svc.GetUpdateStatus()
	st := proto.CloneOf(orig)
	var stale []*slot
	for _, s := range sortedSlots(slots) {
		if s.stale {
			stale = append(stale, s)
		}
	}
	switch {
	case st.GetSpecVersion() == r.svc.GetSpecVersion():
	case len(stale) == 0 && !slices.ContainsFunc(sortedSlots(slots), func(s *slot) bool { return s.replaced != nil }):
		return
	default:
		// Tasks of another template, and no rollout of this one (a
		// service stored before rollouts were recorded): start one.
		st = newRollout(r.now, api.UpdateState_UPDATE_STATE_UPDATING, r.svc.GetSpecVersion(), r.svc.GetSpec().GetUpdate(), "update in progress")
	}
	defer func() {
		slices.SortFunc(st.Slots, func(a, b *api.UpdateSlot) int { return cmp.Compare(a.GetSlot(), b.GetSlot()) })
		if r.rollback == nil && !proto.Equal(st, orig) {
			r.plan.Service = proto.CloneOf(r.svc)
			r.plan.Service.UpdateStatus = st
		}
	}()
	active := st.GetState() == api.UpdateState_UPDATE_STATE_UPDATING || st.GetState() == api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED
	paused := st.GetState() == api.UpdateState_UPDATE_STATE_PAUSED || st.GetState() == api.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED
	if !active && !paused {
		return
	}
	cfg := st.GetConfig()
	if cfg == nil {
		cfg = api.DefaultUpdateConfig()
	}

	failures := r.watchSlots(st, tasks, slots, cfg)
	taken := make(map[uint64]bool, len(st.Slots))
	for _, rec := range st.Slots {
		taken[rec.GetSlot()] = true
	}
	var waiting []*slot
	for _, s := range stale {
		if !taken[s.num] {
			waiting = append(waiting, s)
		}
	}
	if active && len(failures) > 0 && cfg.GetFailureAction() != api.UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE {
		total := st.GetUpdated() + uint64(len(st.Slots)) + uint64(len(waiting))
		if float64(st.GetFailures()) > float64(cfg.GetMaxFailureRatio())*float64(total) {
			r.failureAction(st, cfg, failures[0])
			return
		}
	}
	if !active {
		return
	}
	for _, s := range sortedSlots(slots) {
		if s.replaced != nil && !taken[s.num] {
			st.Slots = append(st.Slots, &api.UpdateSlot{
				Slot: s.num, TaskId: s.replaced.GetId(), Phase: api.UpdatePhase_UPDATE_PHASE_STARTING, Since: timestamppb.New(r.now),
			})
			taken[s.num] = true
		}
	}
	r.takeSlots(st, cfg, waiting)
	for _, rec := range st.Slots {
		if rec.GetPhase() != api.UpdatePhase_UPDATE_PHASE_FAILED {
			return
		}
		taken[rec.GetSlot()] = true
	}
	for _, s := range slots {
		if !s.settled && !taken[s.num] {
			return
		}
	}
	r.complete(st)
}

// watchSlots follows the slots in flight: a new task that runs starts
// being monitored, one that ran for the monitor period is done, one that
// ended before is a failure. It returns the new failures, by slot.
func (r *reconciler) watchSlots(st *api.UpdateStatus, tasks []*api.Task, slots map[uint64]*slot, cfg *api.UpdateConfig) []*api.Task {
	byID := make(map[string]*api.Task, len(tasks))
	for _, t := range tasks {
		byID[t.GetId()] = t
	}
	monitor := cfg.GetMonitor().AsDuration()
	var failures []*api.Task
	kept := st.Slots[:0]
	for _, rec := range st.Slots {
		t := byID[rec.GetTaskId()]
		if slots[rec.GetSlot()] == nil {
			continue // scaled away
		}
		if rec.GetPhase() == api.UpdatePhase_UPDATE_PHASE_FAILED {
			kept = append(kept, rec)
			continue
		}
		switch {
		case t == nil:
			// Never committed (the status was, in an earlier command) or
			// already gone: the slot is stale again, or not at all.
			continue
		case r.ended(t):
			rec.Phase, rec.Since = api.UpdatePhase_UPDATE_PHASE_FAILED, timestamppb.New(r.now)
			st.Failures++
			failures = append(failures, t)
		case r.up(t):
			if rec.GetPhase() != api.UpdatePhase_UPDATE_PHASE_MONITORING {
				rec.Phase, rec.Since = api.UpdatePhase_UPDATE_PHASE_MONITORING, timestamppb.New(r.now)
			}
			if done := rec.GetSince().AsTime().Add(monitor); !r.now.Before(done) {
				st.Updated++
				continue
			} else {
				r.wakeAt(done)
			}
		}
		kept = append(kept, rec)
	}
	st.Slots = kept
	slices.SortFunc(failures, func(a, b *api.Task) int { return cmp.Compare(a.GetSlot(), b.GetSlot()) })
	return failures
}

// failureAction pauses the rollout, or rolls the service back, naming the
// task that failed and why.
func (r *reconciler) failureAction(st *api.UpdateStatus, cfg *api.UpdateConfig, failed *api.Task) {
	why := fmt.Sprintf("task %s %s", api.TaskName(failed), api.StateName(failed.GetStatus().GetState()))
	if r.lost(failed) {
		why = fmt.Sprintf("task %s was lost with its node", api.TaskName(failed))
	}
	if e := failed.GetStatus().GetErr(); e != "" {
		why += ": " + e
	}
	rollingBack := st.GetState() == api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED
	if cfg.GetFailureAction() == api.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK && !rollingBack {
		if rb, err := Rollback(r.now, r.svc, "update rolled back: "+why, false); err == nil {
			r.rollback = rb
			return
		}
		why += " (no previous spec to roll back to)"
	}
	if rollingBack {
		st.State, st.Message = api.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED, "rollback paused: "+why
	} else {
		st.State, st.Message = api.UpdateState_UPDATE_STATE_PAUSED, "update paused: "+why
	}
}

// takeSlots starts the update of as many waiting slots, in order, as the
// slots still busy leave room for: a slot is busy while its new task does
// not run yet, and for the delay after it does (or after it failed).
func (r *reconciler) takeSlots(st *api.UpdateStatus, cfg *api.UpdateConfig, waiting []*slot) {
	room := len(waiting)
	if p := cfg.GetParallelism(); p > 0 {
		delay := cfg.GetDelay().AsDuration()
		busy := uint64(0)
		for _, rec := range st.Slots {
			free := rec.GetSince().AsTime().Add(delay)
			switch {
			case rec.GetPhase() == api.UpdatePhase_UPDATE_PHASE_STARTING:
				busy++
			case r.now.Before(free):
				busy++
				r.wakeAt(free)
			}
		}
		room = int(min(p-min(busy, p), uint64(room)))
	}
	room = min(room, maxSlotsPerStep)
	startFirst := cfg.GetOrder() == api.UpdateOrder_UPDATE_ORDER_START_FIRST
	for _, s := range waiting[:room] {
		if !startFirst {
			r.setDesired(s.incumbent, api.TaskState_TASK_STATE_SHUTDOWN)
		}
		t := r.create(s.num, 0, 0, 0, "created for updated spec")
		st.Slots = append(st.Slots, &api.UpdateSlot{
			Slot: s.num, TaskId: t.GetId(), Phase: api.UpdatePhase_UPDATE_PHASE_STARTING, Since: timestamppb.New(r.now),
		})
	}
}

// complete ends a rollout that has no slot left to take or watch.
func (r *reconciler) complete(st *api.UpdateStatus) {
	if st.GetState() == api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED {
		// Keep why it rolled back: the user asked, or a task failed.
		st.State, st.Message = api.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, "rollback completed: "+st.GetMessage()
	} else {
		st.State, st.Message = api.UpdateState_UPDATE_STATE_COMPLETED, "update completed"
	}
	if st.GetFailures() > 0 {
		st.Message += fmt.Sprintf(" with %d failed slot(s) of %d", st.GetFailures(), st.GetFailures()+st.GetUpdated())
	}
	st.CompletedAt = timestamppb.New(r.now)
	st.Slots = nil
}

// sortedSlots are the slots in slot order.
func sortedSlots(slots map[uint64]*slot) []*slot {
	out := make([]*slot, 0, len(slots))
	for _, s := range slots {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *slot) int { return cmp.Compare(a.num, b.num) })
	return out
}
