package orchestrator

import (
	"slices"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// jobSlot is where a replicated job's slot stands.
type jobSlot int

const (
	// slotWaiting has no task of the current spec yet: it starts when the
	// job's concurrency allows.
	slotWaiting jobSlot = iota
	// slotActive has a task meant to run (or one about to be restarted).
	slotActive
	// slotDone has a task of the current spec that completed.
	slotDone
	// slotFailed has a task that failed and that the restart policy does
	// not replace: the slot stays as it is, and the job cannot finish.
	slotFailed
)

// reconcileReplicatedJob plans a replicated job. It has total_completions
// slots, each of which needs one task that exits 0; at most max_concurrent
// slots have a task at a time, and slots start in number order. A task
// that completes is never run again; one that fails is replaced as the
// restart policy says (with the replicated back-off), in the same slot,
// without counting against the concurrency. A spec change makes a new run
// of the job: every slot starts again, and tasks of the old spec still
// running are stopped. Lowering total_completions drops the slots above
// it, done or not.
func (r *reconciler) reconcileReplicatedJob(tasks []*api.Task) {
	j := r.svc.GetSpec().GetReplicatedJob()
	total := j.GetTotalCompletions()
	concurrent := j.GetMaxConcurrent()
	if concurrent == 0 {
		concurrent = total
	}

	bySlot := r.slotsOf(tasks)
	var waiting []uint64
	active := uint64(0)
	for num := uint64(1); num <= total; num++ {
		s := bySlot[num]
		if s == nil {
			waiting = append(waiting, num)
			continue
		}
		switch r.reconcileJobSlot(s) {
		case slotWaiting:
			waiting = append(waiting, num)
		case slotActive:
			active++
		}
	}
	for num, s := range bySlot {
		if num == 0 || num > total {
			r.retireSlot(s)
		}
	}
	for _, num := range waiting {
		if active >= concurrent {
			break
		}
		r.create(num, 0, 0, 0, "created")
		active++
	}
}

// reconcileJobSlot brings one slot of a replicated job along and says
// where it stands. It never starts a slot: the caller does, within the
// job's concurrency.
func (r *reconciler) reconcileJobSlot(s *slot) jobSlot {
	cur := r.tidy(s)
	history := slices.Clone(s.history)
	defer func() { r.pruneHistory(history) }()

	if cur != nil {
		if !r.stale(cur) && !r.ended(cur) {
			r.waitOut(cur)
			return slotActive
		}
		// Decided below on the slot's last task, as the next Reconcile
		// will see it.
		r.shutdown(cur, &history)
	}
	if len(history) == 0 {
		return slotWaiting
	}
	last := history[0]
	switch {
	case r.stale(last):
		return slotWaiting
	case last.GetStatus().GetState() == api.TaskState_TASK_STATE_COMPLETE:
		return slotDone
	case r.ended(last):
		before := len(r.plan.Create)
		r.restart(s.num, last)
		if len(r.plan.Create) > before {
			return slotActive
		}
		return slotFailed
	}
	// Told to stop and still stopping: it holds its place.
	return slotActive
}
