package ctl

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/golden"
)

func TestPlacementFlagsBuildSpec(t *testing.T) {
	// spec is the spec of `service create --name web ARGS nginx`, with
	// mode as given and the task edited.
	spec := func(mode func(s *api.ServiceSpec), edit func(task *api.TaskSpec)) *api.ServiceSpec {
		s := &api.ServiceSpec{Name: "web", Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "nginx"}}}
		mode(s)
		if edit != nil {
			edit(s.Task)
		}
		return s
	}
	replicated := func(s *api.ServiceSpec) {
		s.Mode = &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}
	}
	job := func(total, concurrent uint64) func(s *api.ServiceSpec) {
		return func(s *api.ServiceSpec) {
			s.Mode = &api.ServiceSpec_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{TotalCompletions: total, MaxConcurrent: concurrent}}
		}
	}
	tests := []struct {
		name string
		args []string
		want *api.ServiceSpec
	}{
		{"global", []string{"--mode", "global"}, spec(func(s *api.ServiceSpec) {
			s.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}}
		}, nil)},
		{"global job", []string{"--mode", "global-job"}, spec(func(s *api.ServiceSpec) {
			s.Mode = &api.ServiceSpec_GlobalJob{GlobalJob: &api.GlobalJob{}}
		}, nil)},
		{
			"replicated job: --replicas are the completions",
			[]string{"--mode", "replicated-job", "--replicas", "5", "--max-concurrent", "2"},
			spec(job(5, 2), nil),
		},
		{
			"replicated job: max concurrent left to the managers",
			[]string{"--mode", "replicated-job"},
			spec(job(1, 0), nil),
		},
		{"replicated, said", []string{"--mode", "replicated"}, spec(replicated, nil)},
		{
			"spread and cap",
			[]string{"--placement-pref", "spread=node.labels.zone", "--placement-pref", "spread=node.labels.rack", "--replicas-max-per-node", "2"},
			spec(replicated, func(task *api.TaskSpec) {
				task.Placement = &api.Placement{
					Preferences:        []*api.PlacementPreference{{Spread: "node.labels.zone"}, {Spread: "node.labels.rack"}},
					MaxReplicasPerNode: 2,
				}
			}),
		},
		{
			"limits and reservations in Docker's syntax",
			[]string{"--limit-cpu", "1.5", "--limit-memory", "1.5G", "--limit-pids", "100", "--reserve-cpu", "0.25", "--reserve-memory", "512M"},
			spec(replicated, func(task *api.TaskSpec) {
				task.Resources = &api.ResourceRequirements{
					Limits:       &api.Resources{NanoCpus: 1_500_000_000, MemoryBytes: 3 << 29},
					Reservations: &api.Resources{NanoCpus: 250_000_000, MemoryBytes: 512 << 20},
					PidsLimit:    100,
				}
			}),
		},
		{
			"a limit alone",
			[]string{"--limit-memory", "64m"},
			spec(replicated, func(task *api.TaskSpec) {
				task.Resources = &api.ResourceRequirements{Limits: &api.Resources{MemoryBytes: 64 << 20}}
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			args := append(append([]string{"service", "create", "-d", "--name", "web"}, tt.args...), "nginx")
			if _, err := runCLI(t, f, args...); err != nil {
				t.Fatal(err)
			}
			if len(f.created) != 1 || !proto.Equal(f.created[0], tt.want) {
				t.Fatalf("spec =\n%s\nwant\n%s", protojson.Format(f.created[0]), protojson.Format(tt.want))
			}
		})
	}
}

func TestPlacementFlagsBadInput(t *testing.T) {
	create := func(args ...string) []string {
		return append(append([]string{"service", "create", "--name", "web"}, args...), "nginx")
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"unknown mode", create("--mode", "daemon"), `invalid --mode "daemon": want replicated, global, replicated-job or global-job`},
		{"replicas with global", create("--mode", "global", "--replicas", "3"), "--replicas cannot be used with --mode global"},
		{"replicas with global job", create("--mode", "global-job", "--replicas", "3"), "--replicas cannot be used with --mode global-job"},
		{"max-concurrent without a job", create("--max-concurrent", "2"), "--max-concurrent is only for --mode replicated-job, not replicated"},
		{"max-concurrent with a global job", create("--mode", "global-job", "--max-concurrent", "2"), "--max-concurrent is only for --mode replicated-job, not global-job"},
		{"job without completions", create("--mode", "replicated-job", "--replicas", "0"), "--replicas must be at least 1 for --mode replicated-job"},
		{"max per node with global", create("--mode", "global", "--replicas-max-per-node", "1"), "--replicas-max-per-node cannot be used with --mode global"},
		{"spread with global", create("--mode", "global", "--placement-pref", "spread=node.labels.zone"), "--placement-pref cannot be used with --mode global"},
		{"pref of another kind", create("--placement-pref", "pack=node.labels.zone"), `invalid --placement-pref "pack=node.labels.zone": want spread=node.labels.KEY`},
		{"spread over no label", create("--placement-pref", "spread=node.hostname"), `invalid --placement-pref "spread=node.hostname": spread over a node label`},
		{"unparsable size", create("--limit-memory", "lots"), `invalid --limit-memory: "lots" is not a size`},
		{"negative size", create("--reserve-memory", "-512M"), `invalid --reserve-memory: "-512M": a size cannot be negative`},
		{"unparsable cpus", create("--limit-cpu", "half"), `invalid --limit-cpu: "half" is not a number of CPUs`},
		{"negative cpus", create("--reserve-cpu", "-1"), `invalid --reserve-cpu: "-1": a number of CPUs cannot be negative`},
		{"negative pids", create("--limit-pids", "-5"), "--limit-pids must be 0 or more, got -5"},
		{"memory limit below the reservation", create("--limit-memory", "256M", "--reserve-memory", "512M"),
			"--limit-memory 256MiB is below --reserve-memory 512MiB"},
		{"cpu limit below the reservation", create("--limit-cpu", "0.5", "--reserve-cpu", "1"), "--limit-cpu 0.5 is below --reserve-cpu 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			_, err := runCLI(t, f, tt.args...)
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

const (
	svcAgent   = "svcagentaaaaaaaaaaaaaaaaaa"
	svcMigrate = "svcmigrateaaaaaaaaaaaaaaaa"
)

// newModesFixture is newFixture with a global service (agent: running on
// alpha, pending on bravo for want of memory, drained off charlie) and a
// replicated job (migrate: 2 of 4 completed, 1 running), both with
// placement and resources, and with what alpha's tasks reserve.
func newModesFixture() *fakeControl {
	f := newFixture()
	agent := &api.Service{
		Id:   svcAgent,
		Meta: &api.Meta{Version: 20, CreatedAt: ago(time.Hour)},
		Spec: &api.ServiceSpec{
			Name: "agent",
			Task: &api.TaskSpec{
				Container: &api.ContainerSpec{Image: "agent:1"},
				Resources: &api.ResourceRequirements{
					Limits:       &api.Resources{MemoryBytes: 512 << 20},
					Reservations: &api.Resources{NanoCpus: api.NanoCPU / 4, MemoryBytes: 256 << 20},
				},
			},
			Mode: &api.ServiceSpec_Global{Global: &api.GlobalService{}},
		},
		SpecVersion: 1,
	}
	migrate := &api.Service{
		Id:   svcMigrate,
		Meta: &api.Meta{Version: 21, CreatedAt: ago(time.Hour)},
		Spec: &api.ServiceSpec{
			Name: "migrate",
			Task: &api.TaskSpec{
				Container: &api.ContainerSpec{Image: "tool:2"},
				Placement: &api.Placement{
					Preferences:        []*api.PlacementPreference{{Spread: "node.labels.zone"}},
					MaxReplicasPerNode: 1,
				},
				Resources: &api.ResourceRequirements{Limits: &api.Resources{NanoCpus: api.NanoCPU / 2}, PidsLimit: 64},
			},
			Mode: &api.ServiceSpec_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{TotalCompletions: 4, MaxConcurrent: 2}},
		},
		SpecVersion: 1,
	}
	f.services = append(f.services, agent, migrate)
	f.counts[svcAgent] = &api.ServiceCounts{Desired: 2, Running: 1}
	f.counts[svcMigrate] = &api.ServiceCounts{Desired: 2, Running: 1, Completed: 2, Completions: 4}
	task := func(id string, svc *api.Service, slot uint64, node string, desired, state api.TaskState, changed time.Duration, errText string) *api.Task {
		return &api.Task{
			Id: id, Meta: &api.Meta{Version: 30, CreatedAt: ago(changed + time.Second)},
			ServiceId: svc.GetId(), ServiceName: svc.GetSpec().GetName(), Slot: slot, NodeId: node,
			Spec: svc.GetSpec().GetTask(), SpecVersion: 1, DesiredState: desired,
			Status: &api.TaskStatus{State: state, Timestamp: ago(changed), Err: errText},
		}
	}
	const (
		running  = api.TaskState_TASK_STATE_RUNNING
		shutdown = api.TaskState_TASK_STATE_SHUTDOWN
		complete = api.TaskState_TASK_STATE_COMPLETE
	)
	f.tasks = append(f.tasks,
		task("taskagentalphaaaaaaaaaaaaa", agent, 0, nodeAlpha, running, running, time.Hour, ""),
		task("taskagentbravoaaaaaaaaaaaa", agent, 0, nodeBravo, running, api.TaskState_TASK_STATE_PENDING, time.Minute,
			"no suitable node (1 node lacks memory (the task reserves 256MiB))"),
		task("taskagentcharlieaaaaaaaaaa", agent, 0, nodeCharlie, shutdown, shutdown, 2*time.Hour, ""),
		task("taskmigrate1aaaaaaaaaaaaaa", migrate, 1, nodeAlpha, shutdown, complete, 10*time.Minute, ""),
		task("taskmigrate2aaaaaaaaaaaaaa", migrate, 2, nodeBravo, shutdown, complete, 9*time.Minute, ""),
		task("taskmigrate3oldaaaaaaaaaaa", migrate, 3, nodeAlpha, shutdown, api.TaskState_TASK_STATE_FAILED, 8*time.Minute,
			"task: non-zero exit (137): OOMKilled"),
		task("taskmigrate3aaaaaaaaaaaaaa", migrate, 3, nodeAlpha, running, running, 7*time.Minute, ""),
	)
	for _, n := range f.nodes {
		n.Description.NanoCpus = 4 * api.NanoCPU
		n.Description.MemoryBytes = 8 << 30
	}
	f.nodes[1].Spec.Labels = map[string]string{"zone": "eu"}
	f.nodes[1].Description.WireguardKey = bytes.Repeat([]byte{0x5a}, 32)
	f.reserved = map[string]*api.Resources{nodeAlpha: {NanoCpus: api.NanoCPU / 4, MemoryBytes: 256 << 20}}
	return f
}

// TestModesOutputGolden checks what users see of modes, placement and
// resources: the REPLICAS of a global service and a job, a global
// service's tasks by node with the whole reason one is pending, the
// --pretty views.
func TestModesOutputGolden(t *testing.T) {
	tests := []struct {
		golden string
		args   []string
	}{
		{"modes_service_ls", []string{"service", "ls"}},
		{"modes_service_ps_global", []string{"service", "ps", "agent"}},
		{"modes_service_ps_job", []string{"service", "ps", "migrate"}},
		{"modes_service_inspect_pretty", []string{"service", "inspect", "--pretty", "agent", "migrate"}},
		{"modes_node_inspect_pretty", []string{"node", "inspect", "--pretty", "alpha"}},
		{"modes_node_inspect_pretty_no_wireguard", []string{"node", "inspect", "--pretty", "bravo"}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			out, err := runCLI(t, newModesFixture(), tt.args...)
			if err != nil {
				t.Fatalf("shoalctl %s: %v", strings.Join(tt.args, " "), err)
			}
			golden.Check(t, tt.golden, out)
		})
	}
}

func TestNodeInspectPrettyAndFormat(t *testing.T) {
	f := newModesFixture()
	_, err := runCLI(t, f, "node", "inspect", "--pretty", "--format", "json", "alpha")
	if msg := ErrorMessage(err); !strings.Contains(msg, "--pretty and --format cannot be used together") {
		t.Fatalf("error = %q", msg)
	}
}

func TestAssessModes(t *testing.T) {
	const complete = api.TaskState_TASK_STATE_COMPLETE
	job := func(total uint64) *api.Service {
		s := watchedService(0)
		s.Spec.Mode = &api.ServiceSpec_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{TotalCompletions: total, MaxConcurrent: 1}}
		return s
	}
	global := func(mode func(*api.ServiceSpec)) *api.Service {
		s := watchedService(0)
		mode(s.Spec)
		return s
	}
	onNode := func(node string, k tk) *api.Task {
		t := k.task()
		t.NodeId, t.Slot = node, 0
		t.Id += node
		return t
	}
	service := func(s *api.ServiceSpec) { s.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}} }
	globalJob := func(s *api.ServiceSpec) { s.Mode = &api.ServiceSpec_GlobalJob{GlobalJob: &api.GlobalJob{}} }
	tests := []struct {
		name      string
		svc       *api.Service
		tasks     []*api.Task
		converged bool
		failed    bool
		lines     []string
	}{
		{
			name:  "job: completed tasks count, running ones do not yet",
			svc:   job(3),
			tasks: []*api.Task{tk{slot: 1, state: complete, desired: stShutdown}.task(), tk{slot: 2, state: stRunning}.task()},
			lines: []string{
				"job progress: 1 out of 3 complete",
				"1/3: complete  [==================================================>]",
				"2/3: running   [===========================================>       ]",
				"3/3:           [>                                                  ]",
			},
		},
		{
			name:      "job: all complete",
			svc:       job(2),
			tasks:     []*api.Task{tk{slot: 1, state: complete, desired: stShutdown}.task(), tk{slot: 2, state: complete, desired: stShutdown}.task()},
			converged: true,
		},
		{
			name:   "job: a failure fails the wait",
			svc:    job(2),
			tasks:  []*api.Task{tk{slot: 1, state: stFailed, desired: stShutdown, err: "task: non-zero exit (1)"}.task()},
			failed: true,
		},
		{
			name:  "global: no task yet is not converged",
			svc:   global(service),
			lines: []string{"overall progress: 0 out of 0 tasks"},
		},
		{
			name:  "global: by node",
			svc:   global(service),
			tasks: []*api.Task{onNode("nodealphaaaaaaaaaaaaaaaaaa", tk{state: stRunning}), onNode("nodebravobbbbbbbbbbbbbbbbb", tk{state: stPending})},
			lines: []string{
				"overall progress: 1 out of 2 tasks",
				"nodealphaaaa: running   [==================================================>]",
				"nodebravobbb: pending   [==============>                                    ]",
			},
		},
		{
			name:      "global: every node given a task runs it",
			svc:       global(service),
			tasks:     []*api.Task{onNode("a", tk{state: stRunning}), onNode("b", tk{state: stRunning}), onNode("c", tk{state: stShutdown, desired: stShutdown})},
			converged: true,
		},
		{
			name:      "global job: every node completed",
			svc:       global(globalJob),
			tasks:     []*api.Task{onNode("a", tk{state: complete, desired: stShutdown}), onNode("b", tk{state: complete})},
			converged: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := assess(tt.svc, tt.tasks, 20, 1)
			if c.converged != tt.converged || (c.failed != nil) != tt.failed {
				t.Errorf("converged %v failed %v, want %v %v", c.converged, c.failed, tt.converged, tt.failed)
			}
			if tt.lines != nil {
				if got := strings.Join(c.lines(), "\n"); got != strings.Join(tt.lines, "\n") {
					t.Errorf("lines:\n%s\nwant:\n%s", got, strings.Join(tt.lines, "\n"))
				}
			}
		})
	}
}

func FuzzPlacementPref(f *testing.F) {
	for _, s := range []string{"spread=node.labels.zone", "spread=", "pack=node.labels.x", "spread=node.labels.", "=", "spread = node.labels.rack "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pref, err := parsePlacementPref(s)
		if err != nil {
			return
		}
		if api.SpreadLabel(pref) == "" {
			t.Fatalf("parsePlacementPref(%q) accepted %q, which names no label", s, pref.GetSpread())
		}
	})
}
