package orchestrator

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

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
		if got := shouldRestart(p, old); got != tt.want {
			t.Errorf("shouldRestart(%v, max %d, %v, restarts %d) = %v, want %v",
				tt.cond, tt.maxAttempts, tt.state, tt.restarts, got, tt.want)
		}
	}
}
