package orchestrator

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

const (
	// DefaultMaxRestartDelay caps the back-off when the policy sets no
	// max_delay: long enough that a crash-looping task costs little, short
	// enough that a fixed dependency (a database coming back) is picked up
	// within half a minute.
	DefaultMaxRestartDelay = 30 * time.Second
	// minBackoffDelay is where the back-off starts when the policy's delay
	// is shorter: a task that dies at once would otherwise be restarted in
	// a tight loop that floods raft with task objects.
	minBackoffDelay = 100 * time.Millisecond
)

// RestartDelay returns the delay before a replacement given the policy and
// back-off step. Step 0 (first failure, or the previous task ran healthily)
// waits the policy's delay. Step n ≥ 1 waits max(delay, 100ms) × 2^(n−1),
// capped at max_delay (default 30s). A max_delay shorter than delay is
// raised to delay: the back-off never restarts faster than the user asked.
func RestartDelay(p *api.RestartPolicy, step uint32) time.Duration {
	delay := max(p.GetDelay().AsDuration(), 0)
	if step == 0 {
		return delay
	}
	maxDelay := p.GetMaxDelay().AsDuration()
	if maxDelay <= 0 {
		maxDelay = DefaultMaxRestartDelay
	}
	maxDelay = max(maxDelay, delay)
	base := max(delay, minBackoffDelay)
	shift := step - 1
	// base << shift > maxDelay exactly when base > maxDelay >> shift; the
	// comparison cannot overflow where the shift could.
	if shift >= 63 || base > maxDelay>>shift {
		return maxDelay
	}
	return base << shift
}

// restartCondition resolves UNSPECIFIED to the default, ANY.
func restartCondition(p *api.RestartPolicy) api.RestartCondition {
	if c := p.GetCondition(); c != api.RestartCondition_RESTART_CONDITION_UNSPECIFIED {
		return c
	}
	return api.RestartCondition_RESTART_CONDITION_ANY
}

// shouldRestart reports whether the policy replaces old, a task that ended
// or was lost, at now.
func shouldRestart(p *api.RestartPolicy, old *api.Task, now time.Time) bool {
	switch restartCondition(p) {
	case api.RestartCondition_RESTART_CONDITION_NONE:
		return false
	case api.RestartCondition_RESTART_CONDITION_ON_FAILURE:
		// A lost task never reached COMPLETE, so it counts as a failure.
		if old.GetStatus().GetState() == api.TaskState_TASK_STATE_COMPLETE {
			return false
		}
	}
	n := p.GetMaxAttempts()
	switch {
	case n == 0:
		return true
	case p.GetWindow().AsDuration() > 0:
		return uint64(len(restartsWithin(p, old, now))) < n
	}
	return old.GetRestartCount() < n
}

// restartsWithin are the times of old's slot's restarts within the
// policy's window before now, oldest first.
func restartsWithin(p *api.RestartPolicy, old *api.Task, now time.Time) []*timestamppb.Timestamp {
	since := now.Add(-p.GetWindow().AsDuration())
	var in []*timestamppb.Timestamp
	for _, ts := range old.GetRestartTimes() {
		if ts.AsTime().After(since) {
			in = append(in, ts)
		}
	}
	return in
}

// restartTimes is what old's replacement, made now, carries: the restarts
// within the window, this one included, at most max_attempts of them
// (only whether there are that many matters). Nil without a window.
func restartTimes(p *api.RestartPolicy, old *api.Task, now time.Time) []*timestamppb.Timestamp {
	n := p.GetMaxAttempts()
	if n == 0 || p.GetWindow().AsDuration() <= 0 {
		return nil
	}
	times := append(restartsWithin(p, old, now), timestamppb.New(now))
	if uint64(len(times)) > n {
		times = times[uint64(len(times))-n:]
	}
	return times
}

// nextBackoffStep is the replacement's back-off step: back to 0 when old
// completed or ran for at least healthyRun, else one more than old's. end
// is when old stopped running (its last report, or now for a lost task).
func nextBackoffStep(old *api.Task, end time.Time, healthyRun time.Duration) uint32 {
	st := old.GetStatus()
	if st.GetState() == api.TaskState_TASK_STATE_COMPLETE {
		return 0
	}
	if st.GetStartedAt() != nil && end.Sub(st.GetStartedAt().AsTime()) >= healthyRun {
		return 0
	}
	if old.GetBackoffStep() == ^uint32(0) {
		return old.GetBackoffStep()
	}
	return old.GetBackoffStep() + 1
}

// restartMessage is the new task's status message; it is what `service ps`
// shows while a replacement waits out its back-off.
func restartMessage(delay time.Duration, attempt uint64) string {
	if delay > 0 {
		return fmt.Sprintf("restart delayed %s (attempt %d)", delay, attempt)
	}
	return fmt.Sprintf("restarted (attempt %d)", attempt)
}
