package ctl

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/golden"
)

// TestCreateHealthFlags: the health flags of `service create` give the
// spec exactly what the user said; the rest is left to the image and the
// defaults, merged on the node.
func TestCreateHealthFlags(t *testing.T) {
	d := durationpb.New
	tests := []struct {
		name string
		args []string
		want *api.HealthConfig
	}{
		{"none given", nil, nil},
		{"a command", []string{"--health-cmd", "curl -f http://localhost/ || exit 1"},
			&api.HealthConfig{Test: []string{"CMD-SHELL", "curl -f http://localhost/ || exit 1"}}},
		{"every flag", []string{"--health-cmd", "/check", "--health-interval", "2s", "--health-timeout", "500ms", "--health-retries", "5", "--health-start-period", "1m"},
			&api.HealthConfig{Test: []string{"CMD-SHELL", "/check"}, Interval: d(2 * time.Second), Timeout: d(500 * time.Millisecond), Retries: 5, StartPeriod: d(time.Minute)}},
		{"timings for the image's check", []string{"--health-interval", "1s", "--health-retries", "0", "--health-start-period", "0s"},
			&api.HealthConfig{Interval: d(time.Second), StartPeriod: d(0)}},
		{"disabled", []string{"--no-healthcheck"}, &api.HealthConfig{Test: []string{"NONE"}}},
		{"an empty command is the image's", []string{"--health-cmd", ""}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			args := append(append([]string{"service", "create", "-d", "--name", "web"}, tt.args...), "nginx")
			if _, err := runCLI(t, f, args...); err != nil {
				t.Fatal(err)
			}
			if len(f.created) != 1 {
				t.Fatalf("CreateService called %d times", len(f.created))
			}
			if got := f.created[0].GetTask().GetContainer().GetHealthcheck(); !proto.Equal(got, tt.want) {
				t.Errorf("healthcheck = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestHealthFlagErrors: bad health flags are refused with a clear message,
// before shoalctl connects.
func TestHealthFlagErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"zero interval", []string{"--health-interval", "0s"}, "--health-interval must be positive, got 0s"},
		{"negative interval", []string{"--health-interval", "-1s"}, "--health-interval must be positive, got -1s"},
		{"zero timeout", []string{"--health-timeout", "0"}, "--health-timeout must be positive, got 0s"},
		{"negative retries", []string{"--health-retries", "-1"}, "--health-retries must be 0 or more, got -1"},
		{"huge retries", []string{"--health-retries", "9999999999"}, "--health-retries must be 0 or more"},
		{"negative start period", []string{"--health-start-period", "-5s"}, "--health-start-period must not be negative, got -5s"},
		{"disabled and a command", []string{"--no-healthcheck", "--health-cmd", "true"}, "--no-healthcheck cannot be used with --health-* options"},
		{"disabled and an interval", []string{"--health-interval", "1s", "--no-healthcheck"}, "--no-healthcheck cannot be used with --health-* options"},
		{"not a duration", []string{"--health-interval", "often"}, `invalid argument "often" for "--health-interval"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			args := append(append([]string{"service", "create", "--name", "web"}, tt.args...), "nginx")
			_, err := runCLI(t, f, args...)
			if err == nil {
				t.Fatalf("no error, want %q", tt.wantErr)
			}
			if msg := ErrorMessage(err); !strings.Contains(msg, tt.wantErr) {
				t.Errorf("error = %q, want it to contain %q", msg, tt.wantErr)
			}
			if f.connects != 0 || len(f.calls) != 0 {
				t.Errorf("connected %d times and called %v before rejecting the arguments", f.connects, f.calls)
			}
		})
	}
}

// TestHealthFlagsOverSpec is apply on a spec that has a health check
// already, as `service update` will use it: flags not given keep their
// values, --no-healthcheck replaces the check, and tuning a disabled
// check brings the image's back.
func TestHealthFlagsOverSpec(t *testing.T) {
	d := durationpb.New
	current := &api.HealthConfig{Test: []string{"CMD-SHELL", "/check"}, Interval: d(5 * time.Second), Retries: 2}
	tests := []struct {
		name    string
		current *api.HealthConfig
		args    []string
		want    *api.HealthConfig
	}{
		{"nothing given", current, nil, current},
		{"one timing", current, []string{"--health-timeout", "1s"},
			&api.HealthConfig{Test: []string{"CMD-SHELL", "/check"}, Interval: d(5 * time.Second), Timeout: d(time.Second), Retries: 2}},
		{"a new command", current, []string{"--health-cmd", "/other"},
			&api.HealthConfig{Test: []string{"CMD-SHELL", "/other"}, Interval: d(5 * time.Second), Retries: 2}},
		{"back to the image's command", current, []string{"--health-cmd", ""},
			&api.HealthConfig{Interval: d(5 * time.Second), Retries: 2}},
		{"disabled", current, []string{"--no-healthcheck"}, &api.HealthConfig{Test: []string{"NONE"}}},
		{"tuning a disabled check", &api.HealthConfig{Test: []string{"NONE"}}, []string{"--health-retries", "4"}, &api.HealthConfig{Retries: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("update", pflag.ContinueOnError)
			f := addHealthFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			spec := &api.ServiceSpec{Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "nginx", Healthcheck: proto.Clone(tt.current).(*api.HealthConfig)}}}
			if err := f.apply(spec); err != nil {
				t.Fatal(err)
			}
			if got := spec.GetTask().GetContainer().GetHealthcheck(); !proto.Equal(got, tt.want) {
				t.Errorf("healthcheck = %v, want %v", got, tt.want)
			}
		})
	}
	// Bad input changes nothing.
	fs := pflag.NewFlagSet("update", pflag.ContinueOnError)
	f := addHealthFlags(fs)
	if err := fs.Parse([]string{"--health-retries", "3", "--health-interval", "0s"}); err != nil {
		t.Fatal(err)
	}
	spec := &api.ServiceSpec{Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "nginx", Healthcheck: proto.Clone(current).(*api.HealthConfig)}}}
	if err := f.apply(spec); err == nil {
		t.Fatal("a zero interval was accepted")
	}
	if got := spec.GetTask().GetContainer().GetHealthcheck(); !proto.Equal(got, current) {
		t.Errorf("a refused change altered the spec: %v", got)
	}
}

// TestPsShowsHealth: `service ps` qualifies a running task that has a
// health check with its health, and shows why an unhealthy one failed.
func TestPsShowsHealth(t *testing.T) {
	f := newFixture()
	var web *api.Service
	for _, svc := range f.services {
		if svc.GetSpec().GetName() == "web" {
			web = svc
		}
	}
	status := func(state api.TaskState, health api.TaskHealth, age time.Duration, errText string) *api.TaskStatus {
		return &api.TaskStatus{State: state, Health: health, Timestamp: ago(age), Err: errText}
	}
	task := func(id string, slot uint64, desired api.TaskState, st *api.TaskStatus) *api.Task {
		return &api.Task{
			Id: id, ServiceId: web.GetId(), ServiceName: "web", Slot: slot, NodeId: f.nodes[1].GetId(),
			Meta: &api.Meta{Version: 9, CreatedAt: st.GetTimestamp()}, Spec: web.GetSpec().GetTask(), SpecVersion: web.GetSpecVersion(),
			DesiredState: desired, Status: st,
		}
	}
	const (
		running  = api.TaskState_TASK_STATE_RUNNING
		shutdown = api.TaskState_TASK_STATE_SHUTDOWN
		failed   = api.TaskState_TASK_STATE_FAILED
	)
	f.tasks = []*api.Task{
		task("taskhealthy1aaaaaaaaaaaaaa", 1, running, status(running, api.TaskHealth_TASK_HEALTH_HEALTHY, 2*time.Minute, "")),
		task("taskstarting2aaaaaaaaaaaaa", 2, running, status(running, api.TaskHealth_TASK_HEALTH_STARTING, 4*time.Second, "")),
		task("tasksick2aaaaaaaaaaaaaaaaa", 2, shutdown, status(failed, api.TaskHealth_TASK_HEALTH_UNHEALTHY, 5*time.Second,
			"unhealthy container: health check exited 1: GET /healthz: 503 Service Unavailable")),
		task("taskunchecked3aaaaaaaaaaaa", 3, running, status(running, api.TaskHealth_TASK_HEALTH_UNSPECIFIED, time.Hour, "")),
		task("taskunhealthy4aaaaaaaaaaaa", 4, running, status(running, api.TaskHealth_TASK_HEALTH_UNHEALTHY, time.Second, "")),
	}
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"service_ps_health", []string{"service", "ps", "web"}},
		{"service_ps_health_notrunc", []string{"service", "ps", "--no-trunc", "--format", "{{.Name}}|{{.CurrentState}}|{{.Error}}", "web"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			out, err := runCLI(t, f, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, tc.golden, out)
		})
	}
}

// TestAssessWaitsForHealth: `service create` waits until every replica
// serves, so a running task whose health check has not passed yet is not
// counted, and the progress line says what it waits for; an unhealthy task
// fails the wait with its error.
func TestAssessWaitsForHealth(t *testing.T) {
	withHealth := func(k tk, h api.TaskHealth) *api.Task {
		task := k.task()
		task.Status.Health = h
		return task
	}
	svc := watchedService(2)
	healthy := withHealth(tk{slot: 1, state: stRunning}, api.TaskHealth_TASK_HEALTH_HEALTHY)

	c := assess(svc, []*api.Task{healthy, withHealth(tk{slot: 2, state: stRunning}, api.TaskHealth_TASK_HEALTH_STARTING)}, 20, 1)
	if c.converged || c.running != 1 {
		t.Errorf("one task starting its health check: converged %v, running %d; want false, 1", c.converged, c.running)
	}
	if lines := c.lines(); len(lines) != 3 || !strings.HasSuffix(lines[2], "] health: starting") || strings.Contains(lines[1], "health") {
		t.Errorf("progress lines:\n%s\nwant slot 2 waiting for its health check", strings.Join(lines, "\n"))
	}

	c = assess(svc, []*api.Task{healthy, withHealth(tk{slot: 2, state: stRunning}, api.TaskHealth_TASK_HEALTH_HEALTHY)}, 20, 1)
	if !c.converged || c.running != 2 {
		t.Errorf("both healthy: converged %v, running %d; want true, 2", c.converged, c.running)
	}

	sick := withHealth(tk{slot: 2, state: stFailed, err: "unhealthy container: health check exited 1"}, api.TaskHealth_TASK_HEALTH_UNHEALTHY)
	c = assess(svc, []*api.Task{healthy, sick}, 20, 1)
	if c.failed.GetSlot() != 2 || c.converged {
		t.Errorf("unhealthy task: failed %v, converged %v; want slot 2 failed", c.failed, c.converged)
	}
}

// TestInspectShowsHealthcheck: `service inspect --pretty` shows what the
// spec says of the health check.
func TestInspectShowsHealthcheck(t *testing.T) {
	f := newFixture()
	for _, svc := range f.services {
		switch svc.GetSpec().GetName() {
		case "web":
			svc.Spec.Task.Container.Healthcheck = &api.HealthConfig{
				Test: []string{"CMD-SHELL", "curl -f http://localhost/"}, Interval: durationpb.New(5 * time.Second), Retries: 2,
			}
		case "api":
			svc.Spec.Task.Container.Healthcheck = &api.HealthConfig{Test: []string{"NONE"}}
		}
	}
	out, err := runCLI(t, f, "service", "inspect", "--pretty", "web", "api")
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "service_inspect_pretty_health", out)
}
