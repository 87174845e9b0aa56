package orchestrator

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func TestRestartDelay(t *testing.T) {
	policy := func(delay, maxDelay time.Duration) *api.RestartPolicy {
		p := &api.RestartPolicy{}
		if delay != 0 {
			p.Delay = durationpb.New(delay)
		}
		if maxDelay != 0 {
			p.MaxDelay = durationpb.New(maxDelay)
		}
		return p
	}
	tests := []struct {
		name   string
		policy *api.RestartPolicy
		step   uint32
		want   time.Duration
	}{
		{"nil policy step 0", nil, 0, 0},
		{"nil policy step 1 starts at 100ms", nil, 1, 100 * time.Millisecond},
		{"nil policy step 2", nil, 2, 200 * time.Millisecond},
		{"nil policy step 5", nil, 5, 1600 * time.Millisecond},
		{"nil policy step 9", nil, 9, 25600 * time.Millisecond},
		{"nil policy step 10 capped at 30s", nil, 10, 30 * time.Second},
		{"huge step capped", nil, 1 << 31, 30 * time.Second},
		{"max step capped", nil, ^uint32(0), 30 * time.Second},
		{"step 63 capped", nil, 63, 30 * time.Second},
		{"step 64 capped", nil, 64, 30 * time.Second},
		{"delay step 0", policy(time.Second, 0), 0, time.Second},
		{"delay step 1", policy(time.Second, 0), 1, time.Second},
		{"delay step 3", policy(time.Second, 0), 3, 4 * time.Second},
		{"delay below 100ms step 0", policy(10*time.Millisecond, 0), 0, 10 * time.Millisecond},
		{"delay below 100ms backs off from 100ms", policy(10*time.Millisecond, 0), 2, 200 * time.Millisecond},
		{"custom cap", policy(time.Second, 5*time.Second), 4, 5 * time.Second},
		{"custom cap not reached", policy(time.Second, 5*time.Second), 3, 4 * time.Second},
		{"cap below delay is raised to delay", policy(time.Minute, 0), 3, time.Minute},
		{"negative delay is zero", policy(-time.Second, 0), 0, 0},
		{"negative max delay means default", policy(0, -time.Second), 20, 30 * time.Second},
		{"huge cap never overflows", policy(time.Hour, time.Duration(1<<62)), 40, time.Duration(1 << 62)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RestartDelay(tt.policy, tt.step); got != tt.want {
				t.Errorf("RestartDelay(step %d) = %v, want %v", tt.step, got, tt.want)
			}
		})
	}
}

func TestRestartDelayMonotonic(t *testing.T) {
	p := &api.RestartPolicy{Delay: durationpb.New(300 * time.Millisecond), MaxDelay: durationpb.New(time.Hour)}
	prev := RestartDelay(p, 0)
	for step := uint32(1); step < 200; step++ {
		d := RestartDelay(p, step)
		if d < prev {
			t.Fatalf("RestartDelay(step %d) = %v < step %d's %v", step, d, step-1, prev)
		}
		if d > time.Hour {
			t.Fatalf("RestartDelay(step %d) = %v exceeds max_delay", step, d)
		}
		prev = d
	}
	if prev != time.Hour {
		t.Errorf("back-off never reached max_delay: %v", prev)
	}
}

func TestShouldRestart(t *testing.T) {
	const (
		anyCond   = api.RestartCondition_RESTART_CONDITION_ANY
		onFailure = api.RestartCondition_RESTART_CONDITION_ON_FAILURE
		none      = api.RestartCondition_RESTART_CONDITION_NONE
		unset     = api.RestartCondition_RESTART_CONDITION_UNSPECIFIED
	)
	tests := []struct {
		cond        api.RestartCondition
		maxAttempts uint64
		state       api.TaskState
		restarts    uint64
		want        bool
	}{
		{unset, 0, api.TaskState_TASK_STATE_COMPLETE, 0, true},
		{unset, 0, api.TaskState_TASK_STATE_FAILED, 0, true},
		{anyCond, 0, api.TaskState_TASK_STATE_COMPLETE, 0, true},
		{anyCond, 0, api.TaskState_TASK_STATE_FAILED, 7, true},
		{onFailure, 0, api.TaskState_TASK_STATE_COMPLETE, 0, false},
		{onFailure, 0, api.TaskState_TASK_STATE_FAILED, 0, true},
		{onFailure, 0, api.TaskState_TASK_STATE_REJECTED, 0, true},
		{onFailure, 0, api.TaskState_TASK_STATE_RUNNING, 0, true}, // lost
		{none, 0, api.TaskState_TASK_STATE_FAILED, 0, false},
		{none, 0, api.TaskState_TASK_STATE_COMPLETE, 0, false},
		{anyCond, 3, api.TaskState_TASK_STATE_FAILED, 2, true},
		{anyCond, 3, api.TaskState_TASK_STATE_FAILED, 3, false},
		{onFailure, 1, api.TaskState_TASK_STATE_FAILED, 1, false},
	}
	for _, tt := range tests {
		p := &api.RestartPolicy{Condition: tt.cond, MaxAttempts: tt.maxAttempts}
		old := &api.Task{RestartCount: tt.restarts, Status: &api.TaskStatus{State: tt.state}}
		if got := shouldRestart(p, old, now); got != tt.want {
			t.Errorf("shouldRestart(%v, max %d, %v, restarts %d) = %v, want %v",
				tt.cond, tt.maxAttempts, tt.state, tt.restarts, got, tt.want)
		}
	}
}

// TestRestartWindow checks Swarm's --restart-window: only the restarts
// within the window count towards max_attempts, and the times a slot's
// tasks carry stay bounded.
func TestRestartWindow(t *testing.T) {
	window := durationpb.New(time.Minute)
	policy := &api.RestartPolicy{MaxAttempts: 3, Window: window}
	at := func(ago ...time.Duration) []*timestamppb.Timestamp {
		var out []*timestamppb.Timestamp
		for _, d := range ago {
			out = append(out, timestamppb.New(now.Add(-d)))
		}
		return out
	}
	tests := []struct {
		name     string
		policy   *api.RestartPolicy
		restarts uint64
		times    []*timestamppb.Timestamp
		want     bool
		carried  int // restart_times on the replacement
	}{
		{"first failure", policy, 0, nil, true, 1},
		{"two restarts in the window", policy, 2, at(50*time.Second, 10*time.Second), true, 3},
		{"three restarts in the window: give up", policy, 3, at(50*time.Second, 30*time.Second, 10*time.Second), false, 0},
		{"old restarts no longer count", policy, 9, at(5*time.Minute, 2*time.Minute, 10*time.Second), true, 2},
		{"exactly a window ago no longer counts", policy, 3, at(time.Minute, 30*time.Second, 10*time.Second), true, 3},
		{"no window: the whole life counts", &api.RestartPolicy{MaxAttempts: 3}, 3, nil, false, 0},
		{"window without max attempts: no limit, nothing carried", &api.RestartPolicy{Window: window}, 50, nil, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := &api.Task{RestartCount: tt.restarts, RestartTimes: tt.times, Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_FAILED}}
			if got := shouldRestart(tt.policy, old, now); got != tt.want {
				t.Fatalf("shouldRestart = %v, want %v", got, tt.want)
			}
			if !tt.want {
				return
			}
			carried := restartTimes(tt.policy, old, now)
			if len(carried) != tt.carried {
				t.Fatalf("replacement carries %d restart times, want %d", len(carried), tt.carried)
			}
			if len(carried) > 0 && !carried[len(carried)-1].AsTime().Equal(now) {
				t.Errorf("newest restart time %v, want now", carried[len(carried)-1].AsTime())
			}
		})
	}
}

// TestReconcileRestartWindow follows a crash loop through Reconcile: with
// 2 attempts per minute, the third quick failure within the minute is the
// slot's last word, while failures spread wider than the window go on
// being restarted.
func TestReconcileRestartWindow(t *testing.T) {
	policy := &api.RestartPolicy{MaxAttempts: 2, Window: durationpb.New(time.Minute)}
	svc := newService(1, withRestart(policy))
	run := func(gap time.Duration, failures int) (restarted int) {
		clock := now
		tasks := []*api.Task{newTask(1, failed)}
		for range failures {
			p := Reconcile(clock, Config{}, svc, tasks, testNodes())
			if len(p.Create) == 0 {
				return restarted
			}
			restarted++
			tasks = apply(tasks, p, clock)
			clock = clock.Add(gap)
			next := p.Create[0]
			for i, tk := range tasks {
				if tk.Id == next.Id {
					c := proto.Clone(tk).(*api.Task)
					c.NotBefore = nil
					c.NodeId = nodeReady
					c.Status = &api.TaskStatus{State: failed, Timestamp: timestampAt(clock), StartedAt: timestampAt(clock.Add(-time.Minute))}
					tasks[i] = c
				}
			}
		}
		return restarted
	}
	if got := run(10*time.Second, 10); got != 2 {
		t.Errorf("failures 10s apart: restarted %d times, want 2 (then the window is full)", got)
	}
	if got := run(40*time.Second, 10); got != 10 {
		t.Errorf("failures 40s apart: restarted %d times, want all 10 (never 2 within a minute... but 3 fall within 80s)", got)
	}
}
