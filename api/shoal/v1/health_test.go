package shoalv1

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
)

func TestHealthyAndServing(t *testing.T) {
	const (
		running  = TaskState_TASK_STATE_RUNNING
		starting = TaskState_TASK_STATE_STARTING
		failed   = TaskState_TASK_STATE_FAILED
		shutdown = TaskState_TASK_STATE_SHUTDOWN
	)
	tests := []struct {
		name          string
		state         TaskState
		health        TaskHealth
		desired       TaskState
		healthy, serv bool
	}{
		{"running without a check", running, TaskHealth_TASK_HEALTH_UNSPECIFIED, running, true, true},
		{"running and healthy", running, TaskHealth_TASK_HEALTH_HEALTHY, running, true, true},
		{"running, check not passed yet", running, TaskHealth_TASK_HEALTH_STARTING, running, false, false},
		{"running and unhealthy", running, TaskHealth_TASK_HEALTH_UNHEALTHY, running, false, false},
		{"healthy but told to stop", running, TaskHealth_TASK_HEALTH_HEALTHY, shutdown, true, false},
		{"not running yet", starting, TaskHealth_TASK_HEALTH_UNSPECIFIED, running, false, false},
		{"failed unhealthy", failed, TaskHealth_TASK_HEALTH_UNHEALTHY, running, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			task := &Task{DesiredState: tc.desired, Status: &TaskStatus{State: tc.state, Health: tc.health}}
			if got := Healthy(task); got != tc.healthy {
				t.Errorf("Healthy = %v, want %v", got, tc.healthy)
			}
			if got := Serving(task); got != tc.serv {
				t.Errorf("Serving = %v, want %v", got, tc.serv)
			}
		})
	}
	if Healthy(nil) || Serving(nil) {
		t.Error("a nil task is healthy")
	}
}

func TestHealthName(t *testing.T) {
	for h, want := range map[TaskHealth]string{
		TaskHealth_TASK_HEALTH_UNSPECIFIED: "",
		TaskHealth_TASK_HEALTH_STARTING:    "starting",
		TaskHealth_TASK_HEALTH_HEALTHY:     "healthy",
		TaskHealth_TASK_HEALTH_UNHEALTHY:   "unhealthy",
	} {
		if got := HealthName(h); got != want {
			t.Errorf("HealthName(%v) = %q, want %q", h, got, want)
		}
	}
}

// TestValidateHealthcheck checks the spec rules for health checks: bad
// input is refused with the field and what to do, good input passes.
func TestValidateHealthcheck(t *testing.T) {
	d := durationpb.New
	tests := []struct {
		name    string
		hc      *HealthConfig
		wantErr string // "" for valid
	}{
		{"none at all", nil, ""},
		{"timings only, image's command", &HealthConfig{Interval: d(time.Second), Retries: 5}, ""},
		{"CMD", &HealthConfig{Test: []string{"CMD", "/check", "-v"}}, ""},
		{"CMD-SHELL", &HealthConfig{Test: []string{"CMD-SHELL", "curl -f http://localhost/ || exit 1"}}, ""},
		{"NONE", &HealthConfig{Test: []string{"NONE"}}, ""},
		{"zero start period", &HealthConfig{StartPeriod: d(0)}, ""},
		{"zero interval", &HealthConfig{Interval: d(0)}, "healthcheck.interval: 0s must be at least 1ms"},
		{"negative interval", &HealthConfig{Interval: d(-time.Second)}, "healthcheck.interval: -1s must be at least 1ms"},
		{"zero timeout", &HealthConfig{Timeout: d(0)}, "healthcheck.timeout: 0s must be at least 1ms"},
		{"negative start period", &HealthConfig{StartPeriod: d(-time.Second)}, "healthcheck.start_period: -1s must not be negative"},
		{"invalid duration", &HealthConfig{Interval: &durationpb.Duration{Seconds: 1, Nanos: -1}}, "healthcheck.interval: not a valid duration"},
		{"negative retries", &HealthConfig{Retries: -1}, "healthcheck.retries: -1 must not be negative"},
		{"unknown form", &HealthConfig{Test: []string{"/check"}}, `"/check": the first word must be NONE, CMD or CMD-SHELL`},
		{"CMD without command", &HealthConfig{Test: []string{"CMD"}}, "CMD needs a command"},
		{"CMD-SHELL with two words", &HealthConfig{Test: []string{"CMD-SHELL", "curl", "-f"}}, "CMD-SHELL takes one shell command"},
		{"empty CMD-SHELL", &HealthConfig{Test: []string{"CMD-SHELL", " "}}, "CMD-SHELL takes one shell command"},
		{"NONE with a command", &HealthConfig{Test: []string{"NONE", "x"}}, "NONE takes no command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := &ServiceSpec{
				Name: "web",
				Mode: &ServiceSpec_Replicated{Replicated: &ReplicatedService{Replicas: 1}},
				Task: &TaskSpec{Container: &ContainerSpec{Image: "nginx", Healthcheck: tc.hc}},
			}
			err := ValidateServiceSpec(spec)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("valid spec refused: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}
