package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/worker/exec"
)

func TestProcessArgs(t *testing.T) {
	img := ocispec.ImageConfig{Entrypoint: []string{"/entry", "-x"}, Cmd: []string{"serve", "--port=80"}}
	cmdOnly := ocispec.ImageConfig{Cmd: []string{"/bin/sh", "-c", "true"}}
	tests := []struct {
		name    string
		img     ocispec.ImageConfig
		command []string
		args    []string
		want    []string
		wantErr error
	}{
		{name: "image defaults", img: img, want: []string{"/entry", "-x", "serve", "--port=80"}},
		{name: "args replace cmd", img: img, args: []string{"check"}, want: []string{"/entry", "-x", "check"}},
		{name: "command replaces entrypoint and cmd", img: img, command: []string{"/other"}, want: []string{"/other"}},
		{name: "command and args", img: img, command: []string{"/other"}, args: []string{"a", "b"}, want: []string{"/other", "a", "b"}},
		{name: "cmd only image", img: cmdOnly, want: []string{"/bin/sh", "-c", "true"}},
		{name: "args replace cmd without entrypoint", img: cmdOnly, args: []string{"/bin/true"}, want: []string{"/bin/true"}},
		{name: "nothing to run", img: ocispec.ImageConfig{}, wantErr: errNoCommand},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := processArgs(tt.img, tt.command, tt.args)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("argv = %q, want %q", got, tt.want)
			}
		})
	}
	// The image's slices must not be written through.
	if _, err := processArgs(img, nil, []string{"zzz"}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(img.Cmd, []string{"serve", "--port=80"}) || !slices.Equal(img.Entrypoint, []string{"/entry", "-x"}) {
		t.Fatalf("image config changed: %+v", img)
	}
}

func sampleTask() *api.Task {
	return &api.Task{
		Id:          "abcdefghijklmnopqrstuvwxyz",
		ServiceId:   "svc1",
		ServiceName: "web",
		Slot:        3,
		Spec: &api.TaskSpec{Container: &api.ContainerSpec{
			Image:  "shoal.test/echo:latest",
			Env:    []string{"A=1", "SHOAL_NODE_ID=spoofed"},
			Labels: map[string]string{"team": "blue", exec.LabelTask: "spoofed"},
		}},
	}
}

func TestTaskEnv(t *testing.T) {
	got := taskEnv(sampleTask(), "node9")
	want := []string{
		"A=1",
		"SHOAL_NODE_ID=spoofed",
		"SHOAL_TASK_ID=abcdefghijklmnopqrstuvwxyz",
		"SHOAL_TASK_NAME=web.3.abcdefghijklmnopqrstuvwxyz",
		"SHOAL_SERVICE_NAME=web",
		"SHOAL_SERVICE_ID=svc1",
		"SHOAL_TASK_SLOT=3",
		// Last, so it wins over the spec's entry when the runtime merges.
		"SHOAL_NODE_ID=node9",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("env = %q, want %q", got, want)
	}
}

func TestValidateEnv(t *testing.T) {
	tests := []struct {
		env []string
		ok  bool
	}{
		{env: nil, ok: true},
		{env: []string{"A=1", "B=", "C=x=y"}, ok: true},
		{env: []string{"NOVALUE"}},
		{env: []string{"=1"}},
	}
	for _, tt := range tests {
		if err := validateEnv(tt.env); (err == nil) != tt.ok {
			t.Errorf("validateEnv(%q) = %v, want ok=%v", tt.env, err, tt.ok)
		}
	}
}

func TestContainerLabels(t *testing.T) {
	got := containerLabels(sampleTask(), "node9")
	want := map[string]string{
		"team":            "blue",
		exec.LabelTask:    "abcdefghijklmnopqrstuvwxyz",
		exec.LabelService: "svc1",
		exec.LabelSlot:    "3",
		exec.LabelNode:    "node9",
	}
	if len(got) != len(want) {
		t.Fatalf("labels = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("label %s = %q, want %q", k, got[k], v)
		}
	}
	back := containerFromLabels("cid", got, true)
	if back != (exec.Container{ID: "cid", TaskID: "abcdefghijklmnopqrstuvwxyz", ServiceID: "svc1", Slot: 3, Running: true}) {
		t.Errorf("container from labels = %+v", back)
	}
}

func TestHostname(t *testing.T) {
	tests := []struct {
		name string
		task *api.Task
		want string
	}{
		{name: "spec", task: &api.Task{Id: "t1", ServiceName: "web", Slot: 1, Spec: &api.TaskSpec{Container: &api.ContainerSpec{Hostname: "custom"}}}, want: "custom"},
		{name: "service and slot", task: &api.Task{Id: "t1", ServiceName: "web", Slot: 4}, want: "web.4"},
		{name: "global: service and node", task: &api.Task{Id: "t1", ServiceName: "agent", NodeId: "abcdefghijklmnopqrstuvwxyz"}, want: "agent.abcdefghijkl"},
		{name: "no service name", task: &api.Task{Id: "abcdefghijklmnopqrstuvwxyz"}, want: "abcdefghijkl"},
		{name: "too long", task: &api.Task{Id: "t1", ServiceName: strings.Repeat("s", 63), Slot: 100}, want: strings.Repeat("s", 63)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hostname(tt.task); got != tt.want {
				t.Fatalf("hostname = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStopGracePeriod(t *testing.T) {
	with := func(d *durationpb.Duration) *api.Task {
		return &api.Task{Spec: &api.TaskSpec{Container: &api.ContainerSpec{StopGracePeriod: d}}}
	}
	tests := []struct {
		name string
		task *api.Task
		want time.Duration
	}{
		{name: "unset", task: &api.Task{}, want: defaultStopGracePeriod},
		{name: "set", task: with(durationpb.New(3 * time.Second)), want: 3 * time.Second},
		{name: "zero", task: with(durationpb.New(0)), want: defaultStopGracePeriod},
		{name: "negative", task: with(durationpb.New(-time.Second)), want: defaultStopGracePeriod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := stopGracePeriod(tt.task); got != tt.want {
				t.Fatalf("grace = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseMemTotal(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int64
		wantErr bool
	}{
		{name: "real", in: "MemTotal:       24633144 kB\nMemFree:        1000 kB\n", want: 24633144 * 1024},
		{name: "not first", in: "Foo: 1 kB\nMemTotal: 2 kB\n", want: 2048},
		{name: "missing", in: "MemFree: 1 kB\n", wantErr: true},
		{name: "bad unit", in: "MemTotal: 1 MB\n", wantErr: true},
		{name: "bad number", in: "MemTotal: x kB\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMemTotal(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("mem = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestControllerRejectsInvalidTasks(t *testing.T) {
	e := &Executor{cfg: Config{}.withDefaults()}
	e.log = e.cfg.Logger
	valid := sampleTask()
	tests := []struct {
		name string
		task *api.Task
		ok   bool
	}{
		{name: "valid", task: valid, ok: true},
		{name: "nil", task: nil},
		{name: "no id", task: &api.Task{Spec: valid.Spec}},
		{name: "id not a container name", task: &api.Task{Id: "a/b", Spec: valid.Spec}},
		{name: "no image", task: &api.Task{Id: "t1", Spec: &api.TaskSpec{Container: &api.ContainerSpec{}}}},
		{name: "bad env", task: &api.Task{Id: "t1", Spec: &api.TaskSpec{Container: &api.ContainerSpec{Image: "x", Env: []string{"NOEQ"}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.Controller(tt.task)
			if tt.ok && err != nil {
				t.Fatalf("controller: %v", err)
			}
			if !tt.ok && !errors.Is(err, errInvalidTask) {
				t.Fatalf("controller: got %v, want errInvalidTask", err)
			}
		})
	}
}

func TestResourceOpts(t *testing.T) {
	limits := func(cpu, mem, pids int64) *api.Task {
		task := sampleTask()
		task.Spec.Resources = &api.ResourceRequirements{
			Limits:       &api.Resources{NanoCpus: cpu, MemoryBytes: mem},
			Reservations: &api.Resources{NanoCpus: 4e9, MemoryBytes: 8 << 30}, // the scheduler's, not the node's
			PidsLimit:    pids,
		}
		return task
	}
	ptr := func(v int64) *int64 { return &v }
	uptr := func(v uint64) *uint64 { return &v }
	tests := []struct {
		name   string
		task   *api.Task
		noSwap bool
		want   *specs.LinuxResources
	}{
		{name: "no limits", task: sampleTask(), want: nil},
		{name: "reservations only", task: limits(0, 0, 0), want: nil},
		{
			name: "half a CPU is 50ms of every 100ms",
			task: limits(5e8, 0, 0),
			want: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: ptr(50_000), Period: uptr(100_000)}},
		},
		{
			name: "two and a half CPUs",
			task: limits(25e8, 0, 0),
			want: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: ptr(250_000), Period: uptr(100_000)}},
		},
		{
			name: "memory, swap left alone where it cannot be capped",
			task: limits(0, 256<<20, 0),
			want: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(256 << 20)}},
		},
		{
			name:   "memory with no room to swap",
			task:   limits(0, 256<<20, 0),
			noSwap: true,
			want:   &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(256 << 20), Swap: ptr(256 << 20)}},
		},
		{
			name: "processes",
			task: limits(0, 0, 100),
			want: &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: ptr(100)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &oci.Spec{Linux: &specs.Linux{}}
			for _, opt := range resourceOpts(tt.task, tt.noSwap) {
				if err := opt(context.Background(), nil, nil, s); err != nil {
					t.Fatal(err)
				}
			}
			if !reflect.DeepEqual(s.Linux.Resources, tt.want) {
				got, _ := json.Marshal(s.Linux.Resources)
				want, _ := json.Marshal(tt.want)
				t.Errorf("resources\n got %s\nwant %s", got, want)
			}
		})
	}
}

func TestParseOOMKills(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		err  bool
	}{
		{in: "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n", want: 2}, // v2 memory.events
		{in: "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", want: 1},                // v1 memory.oom_control
		{in: "oom_kill_disable 0\nunder_oom 0\n", err: true},                          // a kernel before 4.13
		{in: "oom_kill many\n", err: true},
	}
	for _, tt := range tests {
		got, err := parseOOMKills(strings.NewReader(tt.in))
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseOOMKills(%q) = %d, %v; want %d (error %v)", tt.in, got, err, tt.want, tt.err)
		}
	}
}
