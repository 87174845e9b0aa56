package orchestrator

import (
	"cmp"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

const (
	// DefaultTaskHistoryLimit is how many ended tasks a slot keeps: enough
	// to see a crash loop's pattern in `service ps`, few enough that a
	// long-lived crash loop does not grow the store without bound.
	DefaultTaskHistoryLimit = 5
	// DefaultHealthyRun is how long a task must have run for its failure
	// to reset the back-off: a process that stayed up 10s got past its
	// start-up, so its failure is news rather than the same crash again.
	DefaultHealthyRun = 10 * time.Second
)

// Config holds cluster-wide orchestrator settings. The zero value means
// the defaults.
type Config struct {
	// TaskHistoryLimit is how many ended tasks are kept per slot; a
	// service's task_history_limit overrides it when > 0.
	TaskHistoryLimit int
	// HealthyRun is how long a task must have run before it failed for
	// the back-off to start again from step 0.
	HealthyRun time.Duration
}

// Plan is what Reconcile wants changed. The caller applies all of it in
// one store transaction, Service first (see Service).
type Plan struct {
	// Service, when set, is a changed clone of the service to store (Meta
	// as read, so a concurrent change of the service refuses the whole
	// plan): the rolling update's progress, or a rollback. It must be
	// committed with, or before, the tasks: a rollout's record of a slot
	// names the slot's new task, and a record whose task never made it to
	// the store is dropped, while a task without its record would go
	// unwatched.
	Service *api.Service
	// Create holds new tasks, ready to store (ids set, Meta unset).
	Create []*api.Task
	// Update holds changed clones of existing tasks; only desired_state
	// differs from the stored task.
	Update []*api.Task
	// Remove holds tasks to delete from the store.
	Remove []*api.Task
	// Wake is the earliest future time at which Reconcile must run again
	// although nothing in the store changed (a restart delay ends); zero
	// when no such time exists. It is not a change: a Plan can be Empty
	// and still have a Wake.
	Wake time.Time
}

// Empty reports whether the plan changes nothing in the store.
func (p Plan) Empty() bool {
	return p.Service == nil && len(p.Create) == 0 && len(p.Update) == 0 && len(p.Remove) == 0
}

// Reconcile computes the changes that bring a service's tasks to its spec.
// svc == nil means the service was deleted; tasks are then all its
// remaining tasks. tasks must be all tasks of the service. nodes must hold
// every node in the store by id: a task on a DOWN node is lost and
// replaced (a global service's waits for its node). The inputs are never
// modified. Each mode has its planner: replicated here, global and the
// jobs in global.go and job.go.
//
// Slots of a replicated service whose task runs from an older task
// template are replaced by the rolling update (update.go), as the
// service's update config paces it; its progress is in the Plan's Service.
func Reconcile(now time.Time, cfg Config, svc *api.Service, tasks []*api.Task, nodes map[string]*api.Node) Plan {
	r := newReconciler(now, cfg, svc, nodes)
	switch {
	case svc == nil:
		for _, t := range tasks {
			r.retire(t)
		}
	case svc.GetSpec().GetReplicatedJob() != nil:
		r.reconcileReplicatedJob(tasks)
	case api.IsGlobal(svc.GetSpec()):
		r.reconcileGlobal(tasks)
	case svc.GetSpec().GetReplicated() == nil:
		return Plan{}
	default:
		r.reconcileReplicated(tasks)
		if r.rollback != nil {
			// The failure action rolled the service back: plan again for
			// the spec it returns to, from the same snapshot, so that no
			// task of the abandoned spec is made in the meantime.
			p := Reconcile(now, cfg, r.rollback, tasks, nodes)
			if p.Service == nil {
				p.Service = r.rollback
			}
			return p
		}
	}
	return r.finish(tasks)
}

func newReconciler(now time.Time, cfg Config, svc *api.Service, nodes map[string]*api.Node) *reconciler {
	r := &reconciler{
		now:          now,
		svc:          svc,
		nodes:        nodes,
		healthyRun:   cfg.HealthyRun,
		historyLimit: cfg.TaskHistoryLimit,
		actions:      make(map[*api.Task]action),
	}
	if r.healthyRun <= 0 {
		r.healthyRun = DefaultHealthyRun
	}
	if r.historyLimit <= 0 {
		r.historyLimit = DefaultTaskHistoryLimit
	}
	if n := svc.GetSpec().GetTaskHistoryLimit(); n > 0 {
		r.historyLimit = int(n)
	}
	return r
}

// action is the final decision about one existing task.
type action struct {
	remove  bool
	desired api.TaskState // set when !remove
}

type reconciler struct {
	now          time.Time
	svc          *api.Service
	nodes        map[string]*api.Node
	healthyRun   time.Duration
	historyLimit int
	// pin is the node new tasks are made for: a global service's current
	// node while its tasks are planned, "" otherwise.
	pin string

	actions map[*api.Task]action
	plan    Plan
	// rollback is the service rolled back by the rollout's failure
	// action; Reconcile then plans again for it.
	rollback *api.Service
}

// slot is one slot's tasks, sorted into the roles they play.
type slot struct {
	num uint64
	// runnable tasks are desired RUNNING, newest first; the first is the
	// slot's current task, any others are duplicates.
	runnable []*api.Task
	// history tasks were taken out of service (desired SHUTDOWN) and
	// either ended or may still run somewhere; newest first.
	history []*api.Task
	// leaving tasks are desired REMOVE: deleted once gone.
	leaving []*api.Task
	// void tasks were taken out of service before they ever got a node:
	// nothing will ever run or report them, so they are deleted.
	void []*api.Task

	// What reconcileSlot found, for the rolling update: incumbent is the
	// task that serves the slot (nil when none does); candidate, a task
	// of the current template starting next to an incumbent of an older
	// one (a start-first update). A slot is stale when its incumbent is of
	// an older template and no candidate is on its way: the rollout
	// decides when it is replaced.
	incumbent *api.Task
	candidate *api.Task
	stale     bool
	// replaced is the new task made for a slot whose task of an older
	// template did not serve (nothing to pace): the rollout watches it
	// like the tasks it makes.
	replaced *api.Task
	// settled: none of the slot's runnable tasks (as read) is of another
	// template. A rollout is complete only when every slot is, so that it
	// is not declared complete in the plan that still replaces some.
	settled bool
}

// occupied reports whether the slot counts towards replicas. A slot whose
// task ended and was not restarted still counts: its last task is the
// slot's last word until the spec changes or the slot is scaled away.
func (s *slot) occupied() bool {
	return s.num != 0 && len(s.runnable)+len(s.history) > 0
}

// sortInto files t under its role in s.
func (s *slot) sortInto(t *api.Task) {
	switch d := t.GetDesiredState(); {
	case d == api.TaskState_TASK_STATE_REMOVE:
		s.leaving = append(s.leaving, t)
	case d <= api.TaskState_TASK_STATE_RUNNING:
		s.runnable = append(s.runnable, t)
	case neverAssigned(t):
		s.void = append(s.void, t)
	default:
		s.history = append(s.history, t)
	}
}

// slotsOf sorts tasks into their slots, each slot's tasks newest first.
func (r *reconciler) slotsOf(tasks []*api.Task) map[uint64]*slot {
	bySlot := make(map[uint64]*slot)
	for _, t := range tasks {
		s := bySlot[t.GetSlot()]
		if s == nil {
			s = &slot{num: t.GetSlot()}
			bySlot[s.num] = s
		}
		s.sortInto(t)
	}
	for _, s := range bySlot {
		slices.SortFunc(s.runnable, r.compareCurrentFirst)
		slices.SortFunc(s.history, r.compareNewestFirst)
	}
	return bySlot
}

func (r *reconciler) reconcileReplicated(tasks []*api.Task) {
	bySlot := r.slotsOf(tasks)
	var occupied []*slot
	for _, s := range bySlot {
		if s.occupied() {
			occupied = append(occupied, s)
		}
	}

	replicas := r.svc.GetSpec().GetReplicated().GetReplicas()
	kept := make(map[uint64]*slot, len(occupied))
	for _, s := range r.keep(occupied, replicas) {
		kept[s.num] = s
	}
	for _, s := range bySlot {
		if kept[s.num] != nil {
			r.reconcileSlot(s)
		} else {
			r.retireSlot(s)
		}
	}

	// Scale up into the lowest free slot numbers.
	missing := replicas - uint64(len(kept))
	for num := uint64(1); missing > 0; num++ {
		if kept[num] == nil {
			r.create(num, 0, 0, 0, "created")
			missing--
		}
	}
	r.rollout(tasks, kept)
}

// keep chooses which occupied slots stay when there are more than
// replicas: those whose task is furthest along (running before starting
// before pending before ended), then the lowest slot numbers.
func (r *reconciler) keep(occupied []*slot, replicas uint64) []*slot {
	if uint64(len(occupied)) <= replicas {
		return occupied
	}
	score := make(map[*slot]int, len(occupied))
	for _, s := range occupied {
		if len(s.runnable) > 0 {
			score[s] = r.liveness(s.runnable[0])
		}
	}
	slices.SortFunc(occupied, func(a, b *slot) int {
		if c := cmp.Compare(score[b], score[a]); c != 0 {
			return c
		}
		return cmp.Compare(a.num, b.num)
	})
	return occupied[:replicas]
}

// liveness ranks a current task for scale-down: higher is kept first.
func (r *reconciler) liveness(t *api.Task) int {
	switch st := t.GetStatus().GetState(); {
	case r.ended(t):
		return 0
	case st == api.TaskState_TASK_STATE_RUNNING:
		return 3
	case st >= api.TaskState_TASK_STATE_ASSIGNED:
		return 2
	default:
		return 1
	}
}

// retireSlot takes a slot out of the service: every task goes.
func (r *reconciler) retireSlot(s *slot) {
	for _, group := range [][]*api.Task{s.runnable, s.history, s.leaving, s.void} {
		for _, t := range group {
			r.retire(t)
		}
	}
}

// sweep deletes a slot's tasks that nothing will report on any more
// (taken out before they reached a node; being removed and stopped).
func (r *reconciler) sweep(s *slot) {
	for _, t := range s.void {
		r.remove(t)
	}
	for _, t := range s.leaving {
		if r.gone(t) {
			r.remove(t)
		}
	}
}

// tidy sweeps a slot of one task (global and job slots: no rollout pairs
// two tasks there) and retires the duplicates of its current task, which
// it returns (nil when the slot has none).
func (r *reconciler) tidy(s *slot) *api.Task {
	r.sweep(s)
	if len(s.runnable) == 0 {
		return nil
	}
	for _, dup := range s.runnable[1:] {
		r.retire(dup)
	}
	return s.runnable[0]
}

// waitOut asks for a Reconcile when t, held back by its restart delay,
// may start.
func (r *reconciler) waitOut(t *api.Task) {
	if nb := t.GetNotBefore(); nb != nil && t.GetStatus().GetState() == api.TaskState_TASK_STATE_NEW {
		r.wakeAt(nb.AsTime())
	}
}

// reconcileSlot brings one kept slot to the spec, but for replacing a
// task that serves from an older template: that is the rollout's (see
// slot.stale).
func (r *reconciler) reconcileSlot(s *slot) {
	r.sweep(s)
	history := slices.Clone(s.history)
	defer func() { r.pruneHistory(history) }()
	s.settled = !slices.ContainsFunc(s.runnable, r.stale)

	if inc := r.incumbent(s.runnable); inc != nil {
		r.keepIncumbent(s, inc, &history)
		return
	}
	if len(s.runnable) > 0 {
		cur := s.runnable[0]
		for _, dup := range s.runnable[1:] {
			r.retire(dup)
		}
		switch {
		case r.stale(cur):
			r.shutdown(cur, &history)
			s.replaced = r.create(s.num, 0, 0, 0, "created for updated spec")
			return
		case r.ended(cur):
			r.shutdown(cur, &history)
			// The slot now has no current task; decide on its last task
			// below, exactly as the next Reconcile will see it.
		default:
			r.waitOut(cur)
			return
		}
	}

	if len(history) == 0 {
		r.create(s.num, 0, 0, 0, "created")
		return
	}
	last := history[0]
	switch {
	case r.stale(last):
		s.replaced = r.create(s.num, 0, 0, 0, "created for updated spec")
	case r.ended(last):
		r.restart(s.num, last)
	}
}

// incumbent is the slot's task that serves, preferring the current
// template (runnable is sorted that way); nil when none serves.
func (r *reconciler) incumbent(runnable []*api.Task) *api.Task {
	for _, t := range runnable {
		if r.up(t) {
			return t
		}
	}
	return nil
}

// keepIncumbent settles a slot that a task serves. The incumbent stays.
// Of the current template, it is the slot's task and every other one
// goes: older ones (the task a start-first update replaced) are shut
// down, duplicates retired. Of an older template, a task of the current
// one that is starting next to it stays too (start-first: the incumbent
// is shut down once it serves); one that ended instead is shut down and
// the incumbent goes on serving, the failure being the rollout's to count.
// Without such a candidate the slot is stale and waits for the rollout.
func (r *reconciler) keepIncumbent(s *slot, inc *api.Task, history *[]*api.Task) {
	s.incumbent = inc
	if r.stale(inc) {
		for _, t := range s.runnable {
			if t != inc && !r.stale(t) && !r.ended(t) {
				s.candidate = t
				break
			}
		}
		s.stale = s.candidate == nil
	}
	for _, t := range s.runnable {
		switch {
		case t == inc || t == s.candidate:
		case r.stale(t) != r.stale(inc):
			r.shutdown(t, history)
		default:
			r.retire(t)
		}
	}
}

// shutdown takes the slot's current task out of service. It joins the
// slot's history unless it never got a node, in which case nothing would
// ever report on it and it is deleted.
func (r *reconciler) shutdown(t *api.Task, history *[]*api.Task) {
	if neverAssigned(t) {
		r.remove(t)
		return
	}
	r.setDesired(t, api.TaskState_TASK_STATE_SHUTDOWN)
	*history = append(*history, t)
	slices.SortFunc(*history, r.compareNewestFirst)
}

// restart creates old's replacement if the restart policy allows it.
func (r *reconciler) restart(num uint64, old *api.Task) {
	if r.drained(old) {
		// A move, not a failure: no back-off, no attempt counted.
		r.create(num, old.GetRestartCount(), 0, 0, "moved off a drained node")
		return
	}
	policy := r.svc.GetSpec().GetTask().GetRestart()
	if !shouldRestart(policy, old, r.now) {
		return
	}
	end := r.now
	if ts := old.GetStatus().GetTimestamp(); ts != nil && !r.lost(old) {
		end = ts.AsTime()
	}
	step := nextBackoffStep(old, end, r.healthyRun)
	delay := RestartDelay(policy, step)
	attempt := old.GetRestartCount() + 1
	t := r.create(num, attempt, step, delay, restartMessage(delay, attempt))
	t.RestartTimes = restartTimes(policy, old, r.now)
}

// pruneHistory deletes the oldest ended tasks beyond the history limit.
// Tasks that may still run are neither counted nor deleted.
func (r *reconciler) pruneHistory(history []*api.Task) {
	kept := 0
	for _, t := range history {
		if !terminal(t) {
			continue
		}
		if kept < r.historyLimit {
			kept++
			continue
		}
		r.remove(t)
	}
}

func (r *reconciler) create(num, restartCount uint64, step uint32, delay time.Duration, msg string) *api.Task {
	t := &api.Task{
		Id:          api.NewID(),
		ServiceId:   r.svc.GetId(),
		ServiceName: r.svc.GetSpec().GetName(),
		Slot:        num,
		NodeId:      r.pin,
		SpecVersion: r.svc.GetSpecVersion(),
		Status: &api.TaskStatus{
			Timestamp: timestamppb.New(r.now),
			State:     api.TaskState_TASK_STATE_NEW,
			Message:   msg,
		},
		DesiredState: api.TaskState_TASK_STATE_RUNNING,
		RestartCount: restartCount,
		BackoffStep:  step,
	}
	if spec := r.svc.GetSpec().GetTask(); spec != nil {
		t.Spec = proto.Clone(spec).(*api.TaskSpec)
	}
	if delay > 0 {
		nb := r.now.Add(delay)
		t.NotBefore = timestamppb.New(nb)
		r.wakeAt(nb)
	}
	r.plan.Create = append(r.plan.Create, t)
	return t
}

// retire gives t desired state REMOVE, or deletes it at once when nothing
// is left to stop.
func (r *reconciler) retire(t *api.Task) {
	if r.gone(t) {
		r.remove(t)
		return
	}
	r.setDesired(t, api.TaskState_TASK_STATE_REMOVE)
}

func (r *reconciler) setDesired(t *api.Task, s api.TaskState) {
	if a, ok := r.actions[t]; ok && a.remove {
		return
	}
	r.actions[t] = action{desired: s}
}

func (r *reconciler) remove(t *api.Task) {
	r.actions[t] = action{remove: true}
}

func (r *reconciler) wakeAt(t time.Time) {
	if t.After(r.now) && (r.plan.Wake.IsZero() || t.Before(r.plan.Wake)) {
		r.plan.Wake = t
	}
}

// finish turns the per-task decisions into the Plan, sorted by slot so
// that plans are deterministic.
func (r *reconciler) finish(tasks []*api.Task) Plan {
	for _, t := range tasks {
		a, ok := r.actions[t]
		switch {
		case !ok:
		case a.remove:
			r.plan.Remove = append(r.plan.Remove, t)
		case a.desired != t.GetDesiredState():
			c := proto.Clone(t).(*api.Task)
			c.DesiredState = a.desired
			r.plan.Update = append(r.plan.Update, c)
		}
	}
	bySlotID := func(a, b *api.Task) int {
		if c := cmp.Compare(a.GetSlot(), b.GetSlot()); c != 0 {
			return c
		}
		return cmp.Compare(a.GetId(), b.GetId())
	}
	slices.SortStableFunc(r.plan.Create, func(a, b *api.Task) int { return cmp.Compare(a.GetSlot(), b.GetSlot()) })
	slices.SortFunc(r.plan.Update, bySlotID)
	slices.SortFunc(r.plan.Remove, bySlotID)
	return r.plan
}

// stale reports whether t was made from another task template than the
// service's: an older one, or (after a rollback) the one rolled back.
func (r *reconciler) stale(t *api.Task) bool {
	return t.GetSpecVersion() != r.svc.GetSpecVersion()
}

// up reports whether t does its job, for a rollout: it runs and, if it
// has a health check, is healthy (api.Healthy), and its node is neither
// lost nor drained. This is the one place that decides when a new task
// counts as started.
func (r *reconciler) up(t *api.Task) bool {
	return api.Healthy(t) && !r.ended(t)
}

// lost reports whether t may still be running on a node that is DOWN or
// was removed from the cluster: either way nobody will report on it again.
func (r *reconciler) lost(t *api.Task) bool {
	if terminal(t) || t.GetNodeId() == "" {
		return false
	}
	n, ok := r.nodes[t.GetNodeId()]
	return !ok || n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN
}

// drained reports whether t runs on a node the operator drained: it must
// move, whatever the restart policy says.
func (r *reconciler) drained(t *api.Task) bool {
	if terminal(t) || t.GetNodeId() == "" {
		return false
	}
	n, ok := r.nodes[t.GetNodeId()]
	return ok && n.GetSpec().GetAvailability() == api.NodeAvailability_NODE_AVAILABILITY_DRAIN
}

// ended reports whether t will not run (again) for its slot.
func (r *reconciler) ended(t *api.Task) bool {
	return terminal(t) || r.lost(t) || r.drained(t)
}

// gone reports whether a task being removed has nothing left to stop:
// it ended, never reached a node, or its node is DOWN or no longer exists.
// A node that comes back stops whatever it no longer has assigned.
func (r *reconciler) gone(t *api.Task) bool {
	if terminal(t) || !dispatched(t) {
		return true
	}
	n, ok := r.nodes[t.GetNodeId()]
	return !ok || n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN
}

// compareCurrentFirst orders a slot's runnable tasks, the first being the
// slot's current task: the current template first (after a rollback, the
// older version number is the current one), then compareNewer.
func (r *reconciler) compareCurrentFirst(a, b *api.Task) int {
	if sa, sb := r.stale(a), r.stale(b); sa != sb {
		if sb {
			return -1
		}
		return 1
	}
	return r.compareNewer(a, b)
}

// compareNewestFirst orders a slot's history newest first: the later
// created, then compareNewer. Creation time comes first because after a
// rollback a slot's newest task can have the lower spec_version.
func (r *reconciler) compareNewestFirst(a, b *api.Task) int {
	if c := createdAt(b).Compare(createdAt(a)); c != 0 {
		return c
	}
	return r.compareNewer(a, b)
}

// compareNewer orders tasks newest first without their creation times:
// newer spec, then more restarts, then (for duplicates) the one that is
// further along, then the later created, then the id so the order is
// total.
func (r *reconciler) compareNewer(a, b *api.Task) int {
	if c := cmp.Compare(b.GetSpecVersion(), a.GetSpecVersion()); c != 0 {
		return c
	}
	if c := cmp.Compare(b.GetRestartCount(), a.GetRestartCount()); c != 0 {
		return c
	}
	if c := cmp.Compare(r.progress(b), r.progress(a)); c != 0 {
		return c
	}
	if c := createdAt(b).Compare(createdAt(a)); c != 0 {
		return c
	}
	return cmp.Compare(b.GetId(), a.GetId())
}

// progress is how far a task that can still run has come; 0 for one
// that cannot.
func (r *reconciler) progress(t *api.Task) int {
	if r.ended(t) {
		return 0
	}
	return int(t.GetStatus().GetState())
}

func createdAt(t *api.Task) time.Time {
	if ts := t.GetMeta().GetCreatedAt(); ts != nil {
		return ts.AsTime()
	}
	return time.Time{}
}

func terminal(t *api.Task) bool {
	return api.IsTerminal(t.GetStatus().GetState())
}

// neverAssigned reports whether t has not ended and never reached a node:
// it has none, or (a global task, made for its node) the scheduler has not
// assigned it yet, so its node never heard of it.
func neverAssigned(t *api.Task) bool {
	return !terminal(t) && !dispatched(t)
}

// dispatched reports whether t was assigned to a node, which may run it.
func dispatched(t *api.Task) bool {
	return t.GetNodeId() != "" && t.GetStatus().GetState() >= api.TaskState_TASK_STATE_ASSIGNED
}
