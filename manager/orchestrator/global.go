package orchestrator

import (
	"maps"
	"slices"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/scheduler"
)

// reconcileGlobal plans a global service (or global job): one task per
// node that may run it. A node's tasks play the part a slot's play for a
// replicated service (slot 0, told apart by node), with these rules:
//
//   - A node that is READY, active and meets the placement constraints
//     gets a task, made for it (node_id set, so the scheduler only checks
//     that node: a node without the memory the task reserves leaves it
//     pending with the reason).
//   - A drained node, or one that no longer meets the constraints, loses
//     its task (desired SHUTDOWN); it gets a new one once it is eligible
//     again. A task that was stopped that way is not a failure: no
//     back-off, no attempt counted.
//   - A paused node keeps its task but gets no new one, nor one for an
//     updated spec. A node that is DOWN (or not yet heard from by this
//     leader) keeps its task as it is: the node may still run it and will
//     report when it is back. Nothing is moved elsewhere: there is no
//     elsewhere.
//   - A removed node's tasks are removed.
//   - A task that ended is replaced as the restart policy says; for a
//     global job, one that completed is the node's last word.
func (r *reconciler) reconcileGlobal(tasks []*api.Task) {
	job := r.svc.GetSpec().GetGlobalJob() != nil
	// Constraints were validated with the spec; should they not parse, no
	// node is eligible, as the scheduler would not place anything either.
	constraints, err := scheduler.ParseConstraints(r.svc.GetSpec().GetTask().GetPlacement().GetConstraints())
	meets := func(n *api.Node) bool {
		if err != nil {
			return false
		}
		for _, c := range constraints {
			if !c.Matches(n) {
				return false
			}
		}
		return true
	}

	byNode := map[string]*slot{}
	for _, t := range tasks {
		if t.GetNodeId() == "" || t.GetSlot() != 0 {
			r.retire(t) // not a task a global service makes
			continue
		}
		s := byNode[t.GetNodeId()]
		if s == nil {
			s = &slot{}
			byNode[t.GetNodeId()] = s
		}
		s.sortInto(t)
	}
	for id := range r.nodes {
		if byNode[id] == nil {
			byNode[id] = &slot{}
		}
	}
	// In node order, so that plans are deterministic.
	for _, id := range slices.Sorted(maps.Keys(byNode)) {
		s := byNode[id]
		slices.SortFunc(s.runnable, r.compareNewestFirst)
		slices.SortFunc(s.history, r.compareNewestFirst)
		n := r.nodes[id]
		switch {
		case n == nil:
			r.retireSlot(s)
		case n.GetSpec().GetAvailability() == api.NodeAvailability_NODE_AVAILABILITY_DRAIN || !meets(n):
			r.vacate(s)
		default:
			r.pin = id
			r.reconcileNode(s, startsTasks(n), job)
			r.pin = ""
		}
	}
}

// startsTasks reports whether a node may be given a new global task: it
// is READY and active. (Drained nodes were dealt with before.)
func startsTasks(n *api.Node) bool {
	return n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY &&
		n.GetSpec().GetAvailability() != api.NodeAvailability_NODE_AVAILABILITY_PAUSE
}

// vacate takes a node's global task out of service; the node keeps its
// history.
func (r *reconciler) vacate(s *slot) {
	cur := r.tidy(s)
	history := slices.Clone(s.history)
	if cur != nil {
		r.shutdown(cur, &history)
	}
	r.pruneHistory(history)
}

// reconcileNode brings one eligible node's global task to the spec. start
// says whether the node may be given a new task now.
func (r *reconciler) reconcileNode(s *slot, start, job bool) {
	cur := r.tidy(s)
	history := slices.Clone(s.history)
	defer func() { r.pruneHistory(history) }()

	if cur != nil {
		switch {
		case terminal(cur):
			r.shutdown(cur, &history)
			// Decided below on the slot's last task, as the next
			// Reconcile will see it.
		case r.stale(cur) && start:
			r.shutdown(cur, &history)
			r.create(0, 0, 0, 0, "created for updated spec")
			return
		default:
			r.waitOut(cur)
			return
		}
	}
	if !start {
		return
	}
	if len(history) == 0 {
		r.create(0, 0, 0, 0, "created")
		return
	}
	last := history[0]
	switch st := last.GetStatus().GetState(); {
	case r.stale(last):
		r.create(0, 0, 0, 0, "created for updated spec")
	case !terminal(last):
		// Still stopping (a drain just ended, say): its replacement
		// waits, so that the node never runs two.
	case job && st == api.TaskState_TASK_STATE_COMPLETE:
		// The node has done the job.
	case st == api.TaskState_TASK_STATE_SHUTDOWN:
		// Stopped because the node was drained or left the constraints:
		// a move, not a failure.
		r.create(0, last.GetRestartCount(), 0, 0, "created on a node that can take it again")
	default:
		r.restart(0, last)
	}
}
