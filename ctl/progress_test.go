package ctl

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/golden"
)

const (
	stNew       = api.TaskState_TASK_STATE_NEW
	stPending   = api.TaskState_TASK_STATE_PENDING
	stAssigned  = api.TaskState_TASK_STATE_ASSIGNED
	stPreparing = api.TaskState_TASK_STATE_PREPARING
	stStarting  = api.TaskState_TASK_STATE_STARTING
	stRunning   = api.TaskState_TASK_STATE_RUNNING
	stShutdown  = api.TaskState_TASK_STATE_SHUTDOWN
	stFailed    = api.TaskState_TASK_STATE_FAILED
	stRejected  = api.TaskState_TASK_STATE_REJECTED
)

// watchedService is the service the convergence tests wait for: created at
// raft index 20 with spec version 1 (as the fake's CreateService returns).
func watchedService(replicas uint64) *api.Service {
	return &api.Service{
		Id:          "svcnewaaaaaaaaaaaaaaaaaaaa",
		Meta:        &api.Meta{Version: 20},
		Spec:        &api.ServiceSpec{Name: "web", Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: replicas}}},
		SpecVersion: 1,
	}
}

// tk is a task for convergence tests. Options change the defaults: desired
// RUNNING, spec version 1, made after the change (meta version 21).
type tk struct {
	slot    uint64
	state   api.TaskState
	desired api.TaskState
	spec    uint64
	version uint64
	age     time.Duration // since creation; newer tasks win a slot
	err     string
}

func (k tk) task() *api.Task {
	if k.desired == 0 {
		k.desired = stRunning
	}
	if k.spec == 0 {
		k.spec = 1
	}
	if k.version == 0 {
		k.version = 21
	}
	return &api.Task{
		Id:           fmt.Sprintf("task%d%s%s", k.slot, api.StateName(k.state)[:3], strings.Repeat("x", 16)),
		Meta:         &api.Meta{Version: k.version, CreatedAt: ago(k.age)},
		ServiceId:    "svcnewaaaaaaaaaaaaaaaaaaaa",
		ServiceName:  "web",
		Slot:         k.slot,
		SpecVersion:  k.spec,
		DesiredState: k.desired,
		Status:       &api.TaskStatus{State: k.state, Err: k.err},
	}
}

func tasks(ks ...tk) []*api.Task {
	out := make([]*api.Task, len(ks))
	for i, k := range ks {
		out[i] = k.task()
	}
	return out
}

func TestAssess(t *testing.T) {
	tests := []struct {
		name       string
		replicas   uint64
		specVer    uint64 // of the service in the snapshot; 1 if 0
		tasks      []*api.Task
		converged  bool
		running    uint64
		failedSlot uint64 // 0: no failure
	}{
		{name: "all running", replicas: 3, tasks: tasks(tk{slot: 1, state: stRunning}, tk{slot: 2, state: stRunning}, tk{slot: 3, state: stRunning}), converged: true, running: 3},
		{name: "one still starting", replicas: 2, tasks: tasks(tk{slot: 1, state: stRunning}, tk{slot: 2, state: stStarting}), running: 1},
		{name: "slot without task", replicas: 2, tasks: tasks(tk{slot: 1, state: stRunning}), running: 1},
		{name: "no tasks yet", replicas: 2},
		{name: "zero replicas", replicas: 0, converged: true},
		{name: "running but being shut down", replicas: 1, tasks: tasks(tk{slot: 1, state: stRunning, desired: stShutdown})},
		{name: "running an older spec", replicas: 1, specVer: 2, tasks: tasks(tk{slot: 1, state: stRunning, spec: 1})},
		{name: "snapshot older than the change", replicas: 1, specVer: 0, tasks: tasks(tk{slot: 1, state: stRunning})},
		{name: "newest task of a slot counts", replicas: 1, tasks: tasks(tk{slot: 1, state: stRunning, age: time.Minute}, tk{slot: 1, state: stStarting})},
		{
			name: "failure after the change", replicas: 2,
			tasks:      tasks(tk{slot: 1, state: stRunning}, tk{slot: 2, state: stFailed, err: "exit 1"}),
			running:    1,
			failedSlot: 2,
		},
		{
			name: "rejection", replicas: 1,
			tasks:      tasks(tk{slot: 1, state: stRejected, desired: stShutdown, err: "no such image"}),
			failedSlot: 1,
		},
		{
			name: "allocation failure", replicas: 2,
			tasks:      tasks(tk{slot: 1, state: stRunning}, tk{slot: 2, state: api.TaskState_TASK_STATE_NEW, err: "network allocation failed: no free address"}),
			running:    1,
			failedSlot: 2,
		},
		{
			name: "new task waiting for its restart delay", replicas: 1,
			tasks: tasks(tk{slot: 1, state: api.TaskState_TASK_STATE_NEW}),
		},
		{
			name: "failure before the change is history", replicas: 1,
			tasks:     tasks(tk{slot: 1, state: stFailed, desired: stShutdown, version: 5, age: time.Hour}, tk{slot: 1, state: stRunning}),
			converged: true, running: 1,
		},
		{
			name: "failure of an older spec is history", replicas: 1, specVer: 2,
			tasks:     tasks(tk{slot: 1, state: stFailed, desired: stShutdown, spec: 1}, tk{slot: 1, state: stRunning, spec: 2}),
			converged: true, running: 1,
		},
		{
			name: "scale-down not acted on yet", replicas: 1,
			tasks:   tasks(tk{slot: 1, state: stRunning}, tk{slot: 2, state: stRunning}),
			running: 1,
		},
		{
			name: "scale-down acted on", replicas: 1,
			tasks:     tasks(tk{slot: 1, state: stRunning}, tk{slot: 2, state: stRunning, desired: stShutdown}),
			converged: true, running: 1,
		},
		{
			name: "failure beyond replicas is ignored", replicas: 1,
			tasks:     tasks(tk{slot: 1, state: stRunning}, tk{slot: 2, state: stFailed, desired: stShutdown}),
			converged: true, running: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := watchedService(tt.replicas)
			svc.SpecVersion = tt.specVer
			if tt.name != "snapshot older than the change" && tt.specVer == 0 {
				svc.SpecVersion = 1
			}
			c := assess(svc, tt.tasks, 20, 1)
			if c.converged != tt.converged {
				t.Errorf("converged = %v, want %v", c.converged, tt.converged)
			}
			if c.running != tt.running {
				t.Errorf("running = %d, want %d", c.running, tt.running)
			}
			var failedSlot uint64
			if c.failed != nil {
				failedSlot = c.failed.GetSlot()
			}
			if failedSlot != tt.failedSlot {
				t.Errorf("failed slot = %d, want %d", failedSlot, tt.failedSlot)
			}
		})
	}
}

func TestProgressLines(t *testing.T) {
	tests := []struct {
		name     string
		replicas uint64
		tasks    []*api.Task
		want     []string
	}{
		{
			name:     "slots on their way",
			replicas: 3,
			tasks:    tasks(tk{slot: 1, state: stRunning}, tk{slot: 2, state: stPreparing}, tk{slot: 3, state: stNew}),
			want: []string{
				"overall progress: 1 out of 3 tasks",
				"1/3: running   [==================================================>]",
				"2/3: preparing [===================================>               ]",
				"3/3: new       [=======>                                           ]",
			},
		},
		{
			name:     "slot without a task and a failed one",
			replicas: 2,
			tasks:    tasks(tk{slot: 2, state: stFailed, err: "task: non-zero exit (2)"}),
			want: []string{
				"overall progress: 0 out of 2 tasks",
				"1/2:           [>                                                  ]",
				"2/2: failed    task: non-zero exit (2)",
			},
		},
		{
			name:     "slot numbers line up",
			replicas: 10,
			tasks:    tasks(tk{slot: 1, state: stPending}, tk{slot: 10, state: stAssigned}),
			want: append([]string{
				"overall progress: 0 out of 10 tasks",
				" 1/10: pending   [==============>                                    ]",
			}, append(emptySlots(2, 9, 10),
				"10/10: assigned  [=====================>                             ]")...),
		},
		{
			name:     "many replicas: overall line only",
			replicas: maxProgressBars + 1,
			tasks:    tasks(tk{slot: 1, state: stRunning}),
			want:     []string{fmt.Sprintf("overall progress: 1 out of %d tasks", maxProgressBars+1)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := assess(watchedService(tt.replicas), tt.tasks, 20, 1).lines()
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func emptySlots(from, to, replicas int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("%2d/%d:           [>%s]", i, replicas, strings.Repeat(" ", progressBarWidth)))
	}
	return out
}

func TestProgressWriter(t *testing.T) {
	updates := [][]string{
		{"overall progress: 0 out of 2 tasks", "1/2: new", "2/2: new"},
		{"overall progress: 1 out of 2 tasks", "1/2: running", "2/2: new"},
		{"overall progress: 1 out of 1 tasks", "1/1: running"},
	}
	tests := []struct {
		tty  bool
		want string
	}{
		{
			tty: false,
			want: "overall progress: 0 out of 2 tasks\n1/2: new\n2/2: new\n" +
				"overall progress: 1 out of 2 tasks\n1/2: running\n" +
				"overall progress: 1 out of 1 tasks\n1/1: running\n",
		},
		{
			tty: true,
			want: "\x1b[2Koverall progress: 0 out of 2 tasks\n\x1b[2K1/2: new\n\x1b[2K2/2: new\n" +
				"\x1b[3A\x1b[2Koverall progress: 1 out of 2 tasks\n\x1b[2K1/2: running\n\x1b[2K2/2: new\n" +
				"\x1b[3A\x1b[2Koverall progress: 1 out of 1 tasks\n\x1b[2K1/1: running\n\x1b[2K\n",
		},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("tty=%v", tt.tty), func(t *testing.T) {
			var buf bytes.Buffer
			p := &progressWriter{w: &buf, tty: tt.tty}
			for _, u := range updates {
				if err := p.update(u); err != nil {
					t.Fatal(err)
				}
			}
			if buf.String() != tt.want {
				t.Errorf("wrote %q\nwant  %q", buf.String(), tt.want)
			}
		})
	}
}

// snapshot is one WatchTasks message for the service being created.
func snapshot(replicas uint64, ks ...tk) *api.WatchTasksResponse {
	return &api.WatchTasksResponse{Service: watchedService(replicas), Tasks: tasks(ks...)}
}

func TestCreateWaits(t *testing.T) {
	const id = "svcnewaaaaaaaaaaaaaaaaaaaa"
	tests := []struct {
		name     string
		args     []string
		script   []*api.WatchTasksResponse
		end      error
		wantErr  string // "" for success
		noGolden bool
	}{
		{
			name: "create_wait_converged",
			args: []string{"--replicas", "2"},
			script: []*api.WatchTasksResponse{
				snapshot(2),
				snapshot(2, tk{slot: 1, state: stNew}, tk{slot: 2, state: stNew}),
				snapshot(2, tk{slot: 1, state: stAssigned}, tk{slot: 2, state: stPending}),
				snapshot(2, tk{slot: 1, state: stRunning}, tk{slot: 2, state: stPending}),
				snapshot(2, tk{slot: 1, state: stRunning}, tk{slot: 2, state: stStarting}),
				snapshot(2, tk{slot: 1, state: stRunning}, tk{slot: 2, state: stRunning}),
				snapshot(2, tk{slot: 1, state: stFailed}), // never read: converged before
			},
		},
		{
			name: "create_wait_failed",
			args: []string{"--replicas", "2"},
			script: []*api.WatchTasksResponse{
				snapshot(2, tk{slot: 1, state: stPreparing}, tk{slot: 2, state: stPreparing}),
				snapshot(2, tk{slot: 1, state: stRunning}, tk{slot: 2, state: stRejected, err: `pull image "nope": not found`}),
			},
			wantErr: "task web.2.task2rejxxxxxxxxxxxxxxxx: rejected: pull image \"nope\": not found\n" +
				"service web was created but did not converge; it stays: see `shoalctl service ps web`, remove it with `shoalctl service rm web`",
		},
		{
			name:    "create_wait_removed",
			args:    []string{"--replicas", "1"},
			script:  []*api.WatchTasksResponse{snapshot(1), {Removed: true}},
			wantErr: "service web was removed before it converged",
		},
		{
			name:    "create_wait_stream_ends",
			args:    []string{"--replicas", "1"},
			script:  []*api.WatchTasksResponse{snapshot(1)},
			end:     io.EOF,
			wantErr: "watch tasks of service web: shoald ended the watch",
		},
		{
			name:    "create_wait_stream_error",
			args:    []string{"--replicas", "1"},
			end:     status.Error(codes.Internal, "store closed"),
			wantErr: "watch tasks of service web: store closed",
		},
		{
			name:     "create_wait_timeout",
			args:     []string{"--replicas", "1", "--timeout", "1ms"},
			script:   []*api.WatchTasksResponse{snapshot(1, tk{slot: 1, state: stPending})},
			wantErr:  "service web did not converge within 1ms; it keeps converging in the background (follow it with `shoalctl service ps web`)",
			noGolden: true, // whether the snapshot is shown before the timeout is a race
		},
		{
			name: "create_wait_quiet",
			args: []string{"--replicas", "1", "-q"},
			script: []*api.WatchTasksResponse{
				snapshot(1, tk{slot: 1, state: stNew}),
				snapshot(1, tk{slot: 1, state: stRunning}),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			f.watch = map[string][]*api.WatchTasksResponse{id: tt.script}
			f.watchEnd = tt.end
			args := append(append([]string{"service", "create", "--name", "web"}, tt.args...), "nginx")
			out, err := runCLI(t, f, args...)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("error: %v", err)
			}
			if tt.wantErr != "" && ErrorMessage(err) != tt.wantErr {
				t.Errorf("error = %q\nwant    %q", ErrorMessage(err), tt.wantErr)
			}
			if !strings.HasPrefix(out, id+"\n") {
				t.Errorf("output does not start with the service id:\n%s", out)
			}
			if !tt.noGolden {
				golden.Check(t, tt.name, out)
			}
		})
	}
}

func TestScale(t *testing.T) {
	tests := []struct {
		name        string
		args        []string
		updateErrs  []error
		wantOut     string
		wantErr     string
		wantUpdates []uint64 // versions sent, one per UpdateService call
		wantReplica uint64   // in the last update
	}{
		{
			name:        "one service",
			args:        []string{"web=5"},
			wantOut:     "web scaled to 5\n",
			wantUpdates: []uint64{10},
			wantReplica: 5,
		},
		{
			name:        "by id prefix, to zero",
			args:        []string{"svcapi=0"},
			wantOut:     "api scaled to 0\n",
			wantUpdates: []uint64{12},
			wantReplica: 0,
		},
		{
			name:        "lost race is retried",
			args:        []string{"web=1"},
			updateErrs:  []error{status.Error(codes.Aborted, "changed since read")},
			wantOut:     "web scaled to 1\n",
			wantUpdates: []uint64{10, 10},
			wantReplica: 1,
		},
		{
			name:        "races are not retried forever",
			args:        []string{"web=1"},
			updateErrs:  []error{status.Error(codes.Aborted, "changed 1"), status.Error(codes.Aborted, "changed 2"), status.Error(codes.Aborted, "changed 3")},
			wantErr:     "web: changed 3",
			wantUpdates: []uint64{10, 10, 10},
			wantReplica: 1,
		},
		{
			name:        "already at that size: nothing written",
			args:        []string{"web=3"},
			wantOut:     "web scaled to 3\n",
			wantUpdates: nil,
		},
		{
			name:        "unknown service does not stop the others",
			args:        []string{"nope=2", "web=4"},
			wantOut:     "web scaled to 4\n",
			wantErr:     `service "nope": not found`,
			wantUpdates: []uint64{10},
			wantReplica: 4,
		},
		{
			name:        "server refusal",
			args:        []string{"web=4"},
			updateErrs:  []error{status.Error(codes.InvalidArgument, "replicas: at most 1000")},
			wantErr:     "web: replicas: at most 1000",
			wantUpdates: []uint64{10},
			wantReplica: 4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			f.updateErrs = tt.updateErrs
			out, err := runCLI(t, f, append([]string{"service", "scale", "-d"}, tt.args...)...)
			if out != tt.wantOut {
				t.Errorf("output = %q, want %q", out, tt.wantOut)
			}
			if got := ErrorMessage(err); got != tt.wantErr {
				t.Errorf("error = %q, want %q", got, tt.wantErr)
			}
			var versions []uint64
			for _, u := range f.updates {
				versions = append(versions, u.GetVersion())
			}
			if fmt.Sprint(versions) != fmt.Sprint(tt.wantUpdates) {
				t.Errorf("updates sent versions %v, want %v", versions, tt.wantUpdates)
			}
			if n := len(f.updates); n > 0 {
				last := f.updates[n-1]
				if got := last.GetSpec().GetReplicated().GetReplicas(); got != tt.wantReplica {
					t.Errorf("replicas sent = %d, want %d", got, tt.wantReplica)
				}
				orig, _ := f.lookup(last.GetService())
				if last.GetSpec().GetTask().GetContainer().GetImage() != orig.GetSpec().GetTask().GetContainer().GetImage() {
					t.Errorf("scale changed more than the replicas: %v", last.GetSpec())
				}
			}
		})
	}
}

func TestScaleWaits(t *testing.T) {
	f := newFixture()
	// web keeps its tasks (spec version 2) when scaled from 3 to 4; the
	// fake's update returns meta version 11.
	web, _ := f.lookup("web")
	scaled := web.GetSpec().GetReplicated().GetReplicas() + 1
	svc := watchedService(scaled)
	svc.Id, svc.SpecVersion = web.GetId(), web.GetSpecVersion()
	running := func(slots ...uint64) []*api.Task {
		var out []*api.Task
		for _, s := range slots {
			task := tk{slot: s, state: stRunning, spec: 2, version: 9}.task()
			out = append(out, task)
		}
		return out
	}
	newTask := tk{slot: 4, state: stStarting, spec: 2, version: 12}.task()
	f.watch = map[string][]*api.WatchTasksResponse{web.GetId(): {
		{Service: svc, Tasks: append(running(1, 2, 3), newTask)},
		{Service: svc, Tasks: running(1, 2, 3, 4)},
	}}
	out, err := runCLI(t, f, "service", "scale", "web=4")
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "scale_wait_converged", out)
}

// BenchmarkAssess measures judging one snapshot of a large service with
// history, which the wait loop does after every task change.
func BenchmarkAssess(b *testing.B) {
	const replicas = 1000
	var ks []tk
	for s := uint64(1); s <= replicas; s++ {
		ks = append(ks, tk{slot: s, state: stRunning}, tk{slot: s, state: stShutdown, desired: stShutdown, version: 5, age: time.Hour})
	}
	svc, ts := watchedService(replicas), tasks(ks...)
	b.ResetTimer()
	for b.Loop() {
		if c := assess(svc, ts, 20, 1); !c.converged {
			b.Fatal("not converged")
		}
	}
}
