package ctl

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// progressSteps are the states a task passes on its way to running; a
// slot's bar shows how far along its task is.
var progressSteps = []api.TaskState{
	api.TaskState_TASK_STATE_NEW,
	api.TaskState_TASK_STATE_PENDING,
	api.TaskState_TASK_STATE_ASSIGNED,
	api.TaskState_TASK_STATE_ACCEPTED,
	api.TaskState_TASK_STATE_PREPARING,
	api.TaskState_TASK_STATE_STARTING,
	api.TaskState_TASK_STATE_RUNNING,
}

const (
	// progressBarWidth is the width of Docker's bars, so the display
	// looks familiar.
	progressBarWidth = 50
	// maxProgressBars: above this many replicas only the overall line is
	// shown, as a screenful of bars tells nobody anything.
	maxProgressBars = 20
	// stateWidth pads state names to the longest of progressSteps
	// ("preparing") so that bars line up.
	stateWidth = len("preparing")
)

// convergence is what a snapshot of a service's tasks says about whether
// the service has reached its spec.
type convergence struct {
	service  *api.Service
	replicas uint64
	// slots[i] is the up-to-date task meant to run in slot i+1, nil when
	// the orchestrator has not made one yet.
	slots []*api.Task
	// names, when set, label the slots (a global service's nodes).
	names []string
	// job: the goal is COMPLETE, not RUNNING (see goal).
	job bool
	// running counts slots whose task reached the goal: for a service,
	// running and, if it has a health check, healthy (api.Healthy): only
	// then does it serve.
	running uint64
	// converged: every slot 1..replicas has an up-to-date task with desired
	// state RUNNING that is running and healthy, and no slot beyond
	// replicas still has a task meant to run (a scale-down has been acted
	// on).
	converged bool
	// failed is a task of the current spec that failed or was rejected
	// after the change being waited for; nil when none did.
	failed *api.Task
	// extra: a slot beyond replicas still has a task meant to run.
	extra bool
}

// assess judges one WatchTasks snapshot. since is the meta.version (raft
// index) of the change being waited for: a failure whose task last changed
// before it is history, not news (an earlier crash must not fail a scale).
// minSpec is the spec_version that change produced; an older service in
// the snapshot means the snapshot predates the change.
func assess(svc *api.Service, tasks []*api.Task, since, minSpec uint64) convergence {
	if api.IsGlobal(svc.GetSpec()) {
		return assessByNode(svc, tasks, since, minSpec)
	}
	c := convergence{service: svc, replicas: svc.GetSpec().GetReplicated().GetReplicas()}
	if j := svc.GetSpec().GetReplicatedJob(); j != nil {
		c.replicas, c.job = j.GetTotalCompletions(), true
	}
	c.slots = make([]*api.Task, c.replicas)
	for _, t := range tasks {
		slot := t.GetSlot()
		inRange := slot >= 1 && slot <= c.replicas
		wanted := c.wanted(t)
		if !inRange {
			if wanted && !api.IsTerminal(t.GetStatus().GetState()) {
				c.extra = true
			}
			continue
		}
		if !upToDate(svc, t) {
			continue
		}
		if stuck(t) && t.GetMeta().GetVersion() > since && (c.failed == nil || slot < c.failed.GetSlot()) {
			c.failed = t
		}
		if wanted && newer(t, c.slots[slot-1]) {
			c.slots[slot-1] = t
		}
	}
	for _, t := range c.slots {
		if c.reached(t) {
			c.running++
		}
	}
	c.converged = c.failed == nil && !c.extra &&
		svc.GetSpecVersion() >= minSpec && c.running == c.replicas
	return c
}

// stuck reports whether a task cannot run as made: it failed, was
// rejected, or the managers could not allocate it (a NEW task with an
// error, such as a network without free addresses, which they retry).
func stuck(t *api.Task) bool {
	switch t.GetStatus().GetState() {
	case api.TaskState_TASK_STATE_FAILED, api.TaskState_TASK_STATE_REJECTED:
		return true
	case api.TaskState_TASK_STATE_NEW:
		return t.GetStatus().GetErr() != ""
	}
	return false
}

// upToDate reports whether t was made from the service's current task
// spec. The managers bump spec_version only when the task spec changes, so
// scaling keeps the tasks that already run.
func upToDate(svc *api.Service, t *api.Task) bool {
	return t.GetSpecVersion() == svc.GetSpecVersion()
}

// newer reports whether a was made after b (nil b: always).
func newer(a, b *api.Task) bool {
	if b == nil {
		return true
	}
	if c := a.GetMeta().GetCreatedAt().AsTime().Compare(b.GetMeta().GetCreatedAt().AsTime()); c != 0 {
		return c > 0
	}
	if c := cmp.Compare(a.GetMeta().GetVersion(), b.GetMeta().GetVersion()); c != 0 {
		return c > 0
	}
	return a.GetId() > b.GetId()
}

// lines renders the assessment like `docker service create` does:
//
//	overall progress: 2 out of 3 tasks
//	1/3: running   [==================================================>]
//	2/3: starting  [==========================================>        ]
//	3/3: preparing [===================================>               ]
func (c convergence) lines() []string {
	out := []string{fmt.Sprintf("overall progress: %d out of %d tasks", c.running, c.replicas)}
	if c.job {
		out[0] = fmt.Sprintf("job progress: %d out of %d complete", c.running, c.replicas)
	}
	if c.replicas > maxProgressBars {
		return out
	}
	width := len(fmt.Sprint(c.replicas))
	for i, t := range c.slots {
		st := t.GetStatus().GetState()
		name := ""
		if t != nil {
			name = api.StateName(st)
		}
		detail := c.progressBar(st)
		if h := t.GetStatus().GetHealth(); st == api.TaskState_TASK_STATE_RUNNING && !api.Healthy(t) {
			detail += " health: " + api.HealthName(h)
		}
		if api.IsTerminal(st) && st != c.goal() {
			// Where the bar would be, say what went wrong.
			detail = t.GetStatus().GetErr()
		}
		label := fmt.Sprintf("%*d/%d", width, i+1, c.replicas)
		if c.names != nil {
			label = c.names[i]
		}
		out = append(out, strings.TrimRight(fmt.Sprintf("%s: %-*s %s", label, stateWidth, name, detail), " "))
	}
	return out
}

// rollout judges a snapshot of a service whose rolling update (or
// rollback) req waits for: the lines to show, whether it is done (the
// rollout completed and every slot runs its task), or why it failed (it
// paused, the failure action rolled it back, another update replaced it),
// with what the user can do.
func (c convergence) rollout(req waitRequest) (lines []string, done bool, err error) {
	svc, want := c.service, req.service.GetSpecVersion()
	st := svc.GetUpdateStatus()
	name := svc.GetSpec().GetName()
	lines = c.lines()
	rollingBack := st.GetState() == api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED ||
		st.GetState() == api.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED ||
		st.GetState() == api.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED
	switch {
	case svc.GetMeta().GetVersion() < req.service.GetMeta().GetVersion() || st.GetSpecVersion() != svc.GetSpecVersion():
		return lines, false, nil // a snapshot from before the change
	case svc.GetSpecVersion() == want:
	case rollingBack && !req.rollback:
		// The failure action rolled the update back: follow the
		// rollback, then fail.
	default:
		return lines, false, fmt.Errorf("service %s was changed again while waiting (spec version %d); follow it with `shoalctl service ps %s`", name, svc.GetSpecVersion(), name)
	}
	lines = append(lines, fmt.Sprintf("%s: %d of %d slots updated", strings.ReplaceAll(api.UpdateStateName(st.GetState()), "_", " "), st.GetUpdated(), c.replicas))
	rolledBack := rollingBack && !req.rollback
	if rolledBack && st.GetState() == api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED {
		lines = append(lines, st.GetMessage()) // why
	}
	switch st.GetState() {
	case api.UpdateState_UPDATE_STATE_PAUSED:
		return lines, false, fmt.Errorf("%s\nservice %s stays paused: fix what failed and resume with `shoalctl service update --force %s`, or return to the previous spec with `shoalctl service rollback %s`",
			st.GetMessage(), name, name, name)
	case api.UpdateState_UPDATE_STATE_ROLLBACK_PAUSED:
		return lines, false, fmt.Errorf("%s\nservice %s stays paused halfway back: see `shoalctl service ps %s`", st.GetMessage(), name, name)
	case api.UpdateState_UPDATE_STATE_COMPLETED, api.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED:
		switch {
		case c.running != c.replicas || c.extra:
			return lines, false, nil
		case rolledBack:
			return lines, false, fmt.Errorf("%s\nservice %s runs its previous spec again", st.GetMessage(), name)
		case st.GetFailures() > 0:
			return lines, false, fmt.Errorf("%s\nsee `shoalctl service ps %s` for the tasks that failed", st.GetMessage(), name)
		}
		return lines, true, nil
	}
	return lines, false, nil
}

// goal is the state a task must reach: COMPLETE for a job, else RUNNING.
func (c convergence) goal() api.TaskState {
	if c.job {
		return api.TaskState_TASK_STATE_COMPLETE
	}
	return api.TaskState_TASK_STATE_RUNNING
}

// reached reports whether t reached the goal (a running task only once
// it is healthy, if it has a check).
func (c convergence) reached(t *api.Task) bool {
	if c.job {
		return t.GetStatus().GetState() == api.TaskState_TASK_STATE_COMPLETE
	}
	return api.Healthy(t)
}

// wanted reports whether t is a slot's task towards the goal: meant to
// run, or for a job also one that completed (and was then retired).
func (c convergence) wanted(t *api.Task) bool {
	return t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING ||
		(c.job && t.GetStatus().GetState() == api.TaskState_TASK_STATE_COMPLETE)
}

// progressBar draws how far along state is towards the goal.
func (c convergence) progressBar(state api.TaskState) string {
	steps := progressSteps
	if c.job {
		steps = append(slices.Clone(steps), api.TaskState_TASK_STATE_COMPLETE)
	}
	step := slices.Index(steps, state) + 1 // 0 for no task yet
	filled := progressBarWidth * step / len(steps)
	return "[" + strings.Repeat("=", filled) + ">" + strings.Repeat(" ", progressBarWidth-filled) + "]"
}

// progressWriter shows successive renderings of the same lines. On a
// terminal it redraws them in place; elsewhere (a log, a pipe) it writes
// only the lines that changed, so the output reads as a history.
type progressWriter struct {
	w     io.Writer
	tty   bool
	shown []string
}

func (p *progressWriter) update(lines []string) error {
	var b strings.Builder
	if p.tty {
		if len(p.shown) > 0 {
			fmt.Fprintf(&b, "\x1b[%dA", len(p.shown)) // cursor up to the first line
		}
		next := slices.Clone(lines)
		for len(next) < len(p.shown) {
			next = append(next, "") // blank out lines no longer needed
		}
		for _, l := range next {
			b.WriteString("\x1b[2K" + l + "\n") // erase line, write it
		}
		p.shown = next
	} else {
		for i, l := range lines {
			if i >= len(p.shown) || p.shown[i] != l {
				b.WriteString(l + "\n")
			}
		}
		p.shown = lines
	}
	_, err := io.WriteString(p.w, b.String())
	return err
}

// isTerminal reports whether w is a terminal that understands cursor
// movement.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
