package controlapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/internal/testgrpc"
	"github.com/shoal-project/shoal/manager/allocator/stored"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// newRaft starts a single-member raft cluster in a temp dir and waits
// until it leads.
func newRaft(t *testing.T) *state.Node {
	t.Helper()
	_, tr := raft.NewInmemTransport(raft.ServerAddress("m1"))
	n, err := state.Open(state.Config{Dir: t.TempDir(), ID: "m1", Transport: tr, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

// newServer is a Control server over r with its own network allocator,
// as a manager makes it.
func newServer(t *testing.T, r *state.Node, opts ...Option) *Server {
	t.Helper()
	networks, err := stored.New(r, stored.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return New(r, "m1", networks, opts...)
}

// serve runs a Control server over r on an in-memory connection.
func serve(t *testing.T, r *state.Node) api.ControlClient {
	t.Helper()
	conn := testgrpc.Serve(t, func(srv *grpc.Server) { api.RegisterControlServer(srv, newServer(t, r)) })
	return api.NewControlClient(conn)
}

func setup(t *testing.T) (*state.Node, api.ControlClient) {
	r := newRaft(t)
	return r, serve(t, r)
}

func propose(t *testing.T, r *state.Node, actions ...*api.StoreAction) {
	t.Helper()
	if err := r.Propose(context.Background(), actions...); err != nil {
		t.Fatal(err)
	}
}

// spec is a valid spec with nothing defaulted.
func spec(name string, replicas uint64) *api.ServiceSpec {
	return &api.ServiceSpec{
		Name: name,
		Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "example/echo:1"}},
		Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: replicas}},
	}
}

func create(t *testing.T, c api.ControlClient, s *api.ServiceSpec) *api.Service {
	t.Helper()
	resp, err := c.CreateService(context.Background(), &api.CreateServiceRequest{Spec: s})
	if err != nil {
		t.Fatalf("create %s: %v", s.GetName(), err)
	}
	return resp.GetService()
}

func wantCode(t *testing.T, err error, code codes.Code, mention string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("err = %v, want code %v", err, code)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, mention) {
		t.Errorf("message %q does not mention %q", msg, mention)
	}
}

func TestCreateServiceInvalid(t *testing.T) {
	r, c := setup(t)
	tests := []struct {
		name  string
		edit  func(s *api.ServiceSpec)
		nil   bool
		field string
	}{
		{name: "no spec", nil: true, field: "spec"},
		{name: "empty image", edit: func(s *api.ServiceSpec) { s.Task.Container.Image = "" }, field: "task.container.image"},
		{name: "image with a space", edit: func(s *api.ServiceSpec) { s.Task.Container.Image = "echo :1" }, field: "task.container.image"},
		{name: "no container", edit: func(s *api.ServiceSpec) { s.Task = nil }, field: "task.container"},
		{name: "upper-case name", edit: func(s *api.ServiceSpec) { s.Name = "Web" }, field: "name"},
		{name: "empty name", edit: func(s *api.ServiceSpec) { s.Name = "" }, field: "name"},
		{name: "name ending in a dash", edit: func(s *api.ServiceSpec) { s.Name = "web-" }, field: "name"},
		{name: "env without =", edit: func(s *api.ServiceSpec) { s.Task.Container.Env = []string{"GREETING"} }, field: "task.container.env"},
		{name: "env key starting with a digit", edit: func(s *api.ServiceSpec) { s.Task.Container.Env = []string{"1X=y"} }, field: "task.container.env"},
		{name: "bad constraint", edit: func(s *api.ServiceSpec) {
			s.Task.Placement = &api.Placement{Constraints: []string{"node.labels.zone~eu"}}
		}, field: "task.placement.constraints"},
		{name: "replicas over the limit", edit: func(s *api.ServiceSpec) {
			s.Mode = &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: api.MaxReplicas + 1}}
		}, field: "replicas"},
		{name: "no mode", edit: func(s *api.ServiceSpec) { s.Mode = nil }, field: "mode"},
		{name: "negative stop grace", edit: func(s *api.ServiceSpec) {
			s.Task.Container.StopGracePeriod = durationpb.New(-time.Second)
		}, field: "task.container.stop_grace_period"},
		{name: "zero health interval", edit: func(s *api.ServiceSpec) {
			s.Task.Container.Healthcheck = &api.HealthConfig{Test: []string{"CMD", "/check"}, Interval: durationpb.New(0)}
		}, field: "task.container.healthcheck.interval"},
		{name: "negative health retries", edit: func(s *api.ServiceSpec) {
			s.Task.Container.Healthcheck = &api.HealthConfig{Retries: -1}
		}, field: "task.container.healthcheck.retries"},
		{name: "health test without a form", edit: func(s *api.ServiceSpec) {
			s.Task.Container.Healthcheck = &api.HealthConfig{Test: []string{"curl", "localhost"}}
		}, field: "task.container.healthcheck.test"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := spec("web", 1)
			if tc.nil {
				s = nil
			} else {
				tc.edit(s)
			}
			_, err := c.CreateService(context.Background(), &api.CreateServiceRequest{Spec: s})
			wantCode(t, err, codes.InvalidArgument, tc.field)
		})
	}
	var n int
	r.Store().View(func(tx store.ReadTx) { n = len(tx.Services()) })
	if n != 0 {
		t.Errorf("%d services stored from invalid specs", n)
	}
}

func TestCreateServiceDuplicate(t *testing.T) {
	_, c := setup(t)
	first := create(t, c, spec("web", 1))
	_, err := c.CreateService(context.Background(), &api.CreateServiceRequest{Spec: spec("web", 2)})
	wantCode(t, err, codes.AlreadyExists, "web")
	got, err := c.GetService(context.Background(), &api.GetServiceRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got.GetService(), first) {
		t.Errorf("the refused create changed the service:\n%v\nwant %v", got.GetService(), first)
	}
}

func TestCreateServiceDefaults(t *testing.T) {
	_, c := setup(t)
	svc := create(t, c, spec("web", 2))
	if svc.GetId() == "" || svc.GetMeta().GetVersion() == 0 || svc.GetMeta().GetCreatedAt() == nil {
		t.Errorf("stored service lacks id or meta: %v", svc)
	}
	if svc.GetSpecVersion() != 1 {
		t.Errorf("spec_version = %d, want 1", svc.GetSpecVersion())
	}
	s := svc.GetSpec()
	checks := []struct {
		what      string
		got, want any
	}{
		{"restart condition", s.GetTask().GetRestart().GetCondition(), api.RestartCondition_RESTART_CONDITION_ANY},
		{"restart delay", s.GetTask().GetRestart().GetDelay().AsDuration(), time.Duration(0)},
		{"restart max delay", s.GetTask().GetRestart().GetMaxDelay().AsDuration(), 30 * time.Second},
		{"stop grace period", s.GetTask().GetContainer().GetStopGracePeriod().AsDuration(), 10 * time.Second},
		{"task history limit", s.GetTaskHistoryLimit(), uint32(5)},
		{"replicas", s.GetReplicated().GetReplicas(), uint64(2)},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.what, ck.got, ck.want)
		}
	}

	// What the user set is kept.
	custom := spec("api", 1)
	custom.Task.Restart = &api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_ON_FAILURE}
	custom.Task.Container.StopGracePeriod = durationpb.New(3 * time.Second)
	custom.TaskHistoryLimit = 2
	got := create(t, c, custom).GetSpec()
	if got.GetTask().GetRestart().GetCondition() != api.RestartCondition_RESTART_CONDITION_ON_FAILURE ||
		got.GetTask().GetContainer().GetStopGracePeriod().AsDuration() != 3*time.Second || got.GetTaskHistoryLimit() != 2 {
		t.Errorf("defaults overrode the user's settings: %v", got)
	}
}

// TestUpdateService runs updates in order; each step sees what the steps
// before it stored.
func TestUpdateService(t *testing.T) {
	r, c := setup(t)
	svc := create(t, c, spec("web", 1))
	created := svc.GetMeta().GetVersion()
	ctx := context.Background()

	steps := []struct {
		name    string
		version func(cur *api.Service) uint64
		edit    func(s *api.ServiceSpec)
		code    codes.Code
		mention string
		// newTemplate: the step changes the task template, so the spec
		// version changes and a rolling update starts.
		newTemplate bool
		replicas    uint64
	}{
		{
			name:    "scale keeps the spec version",
			version: func(cur *api.Service) uint64 { return cur.GetMeta().GetVersion() },
			edit: func(s *api.ServiceSpec) {
				s.Mode = &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 3}}
			},
			newTemplate: false, replicas: 3,
		},
		{
			name:    "stale version is refused",
			version: func(*api.Service) uint64 { return created },
			edit:    func(s *api.ServiceSpec) { s.Task.Container.Image = "example/echo:2" },
			code:    codes.Aborted, mention: "read it again",
			newTemplate: false, replicas: 3,
		},
		{
			name:        "image change bumps the spec version",
			version:     func(cur *api.Service) uint64 { return cur.GetMeta().GetVersion() },
			edit:        func(s *api.ServiceSpec) { s.Task.Container.Image = "example/echo:2" },
			newTemplate: true, replicas: 3,
		},
		{
			name:        "same spec with defaults left out changes nothing that runs",
			version:     func(*api.Service) uint64 { return 0 },
			edit:        func(s *api.ServiceSpec) { s.Task.Container.Image = "example/echo:2" },
			newTemplate: false, replicas: 3,
		},
		{
			name:    "service labels are not part of the task",
			version: func(*api.Service) uint64 { return 0 },
			edit: func(s *api.ServiceSpec) {
				s.Task.Container.Image = "example/echo:2"
				s.Labels = map[string]string{"team": "a"}
			},
			newTemplate: false, replicas: 3,
		},
		{
			name:    "env change bumps the spec version",
			version: func(*api.Service) uint64 { return 0 },
			edit: func(s *api.ServiceSpec) {
				s.Task.Container.Image = "example/echo:2"
				s.Task.Container.Env = []string{"GREETING=hi"}
			},
			newTemplate: true, replicas: 3,
		},
		{
			name:    "rename is refused",
			version: func(*api.Service) uint64 { return 0 },
			edit:    func(s *api.ServiceSpec) { s.Name = "www" },
			code:    codes.InvalidArgument, mention: "renamed",
			newTemplate: false, replicas: 3,
		},
		{
			name:    "invalid spec is refused",
			version: func(*api.Service) uint64 { return 0 },
			edit:    func(s *api.ServiceSpec) { s.Task.Container.Env = []string{"=x"} },
			code:    codes.InvalidArgument, mention: "task.container.env",
			newTemplate: false, replicas: 3,
		},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			cur, err := c.GetService(ctx, &api.GetServiceRequest{Service: svc.GetId()})
			if err != nil {
				t.Fatal(err)
			}
			s := spec("web", cur.GetService().GetSpec().GetReplicated().GetReplicas())
			step.edit(s)
			_, err = c.UpdateService(ctx, &api.UpdateServiceRequest{Service: "web", Version: step.version(cur.GetService()), Spec: s})
			if step.code != codes.OK {
				wantCode(t, err, step.code, step.mention)
			} else if err != nil {
				t.Fatal(err)
			}
			var after *api.Service
			r.Store().View(func(tx store.ReadTx) { after = tx.Service(svc.GetId()) })
			if step.code != codes.OK && !proto.Equal(after, cur.GetService()) {
				t.Errorf("refused update changed the service:\n%v\nwas %v", after, cur.GetService())
			}
			before := cur.GetService()
			if changed := after.GetSpecVersion() != before.GetSpecVersion(); changed != step.newTemplate {
				t.Errorf("spec_version %d → %d, want a change: %v", before.GetSpecVersion(), after.GetSpecVersion(), step.newTemplate)
			}
			if step.newTemplate {
				if after.GetSpecVersion() < before.GetSpecVersion() || after.GetPreviousSpecVersion() != before.GetSpecVersion() ||
					!proto.Equal(after.GetPreviousSpec(), before.GetSpec()) {
					t.Errorf("spec_version %d (previous %d), was %d; previous spec %v", after.GetSpecVersion(), after.GetPreviousSpecVersion(), before.GetSpecVersion(), after.GetPreviousSpec())
				}
				if st := after.GetUpdateStatus(); st.GetSpecVersion() != after.GetSpecVersion() || st.GetState() != api.UpdateState_UPDATE_STATE_UPDATING {
					t.Errorf("update status %v, want a rollout of version %d", st, after.GetSpecVersion())
				}
			}
			if n := after.GetSpec().GetReplicated().GetReplicas(); n != step.replicas {
				t.Errorf("replicas = %d, want %d", n, step.replicas)
			}
			if after.GetSpec().GetName() != "web" {
				t.Errorf("name = %q", after.GetSpec().GetName())
			}
		})
	}
}

// TestRollbackService returns a service to its previous spec and back, as
// `shoalctl service rollback` does twice, and refuses a service that was
// never updated without changing it.
func TestRollbackService(t *testing.T) {
	r, c := setup(t)
	ctx := context.Background()
	svc := create(t, c, spec("web", 2))
	stored := func() *api.Service {
		var s *api.Service
		r.Store().View(func(tx store.ReadTx) { s = tx.Service(svc.GetId()) })
		return s
	}

	_, err := c.RollbackService(ctx, &api.RollbackServiceRequest{Service: "web"})
	wantCode(t, err, codes.FailedPrecondition, `service "web" has no previous spec to roll back to`)
	if !proto.Equal(stored(), svc) {
		t.Errorf("refused rollback changed the service")
	}

	s := spec("web", 2)
	s.Task.Container.Image = "example/echo:2"
	upd, err := c.UpdateService(ctx, &api.UpdateServiceRequest{Service: "web", Spec: s})
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := svc.GetSpecVersion(), upd.GetService().GetSpecVersion()

	image := func(s *api.Service) string { return s.GetSpec().GetTask().GetContainer().GetImage() }
	for i, want := range []struct {
		image, previous string
		version         uint64
	}{{"example/echo:1", "example/echo:2", v1}, {"example/echo:2", "example/echo:1", v2}} {
		resp, err := c.RollbackService(ctx, &api.RollbackServiceRequest{Service: "web"})
		if err != nil {
			t.Fatal(err)
		}
		got := stored()
		if !proto.Equal(got, resp.GetService()) {
			t.Errorf("rollback %d: answer is not what was stored", i+1)
		}
		if image(got) != want.image || got.GetSpecVersion() != want.version || got.GetPreviousSpec().GetTask().GetContainer().GetImage() != want.previous {
			t.Errorf("rollback %d: image %s version %d previous %s, want %s %d %s", i+1, image(got), got.GetSpecVersion(),
				got.GetPreviousSpec().GetTask().GetContainer().GetImage(), want.image, want.version, want.previous)
		}
		if st := got.GetUpdateStatus(); st.GetState() != api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED || st.GetSpecVersion() != want.version || st.GetMessage() != "manually requested rollback" {
			t.Errorf("rollback %d: status %v", i+1, st)
		}
	}

	// A version check applies as for updates.
	_, err = c.RollbackService(ctx, &api.RollbackServiceRequest{Service: "web", Version: svc.GetMeta().GetVersion()})
	wantCode(t, err, codes.Aborted, "read it again")
}

// TestUpdateConfigRefused sends bad update and rollback configs: each is
// refused naming the field, and nothing is stored.
func TestUpdateConfigRefused(t *testing.T) {
	r, c := setup(t)
	ctx := context.Background()
	svc := create(t, c, spec("web", 1))
	tests := []struct {
		name    string
		edit    func(s *api.ServiceSpec)
		mention string
	}{
		{"failure ratio above 1", func(s *api.ServiceSpec) { s.Update = &api.UpdateConfig{MaxFailureRatio: 1.5} }, "update.max_failure_ratio: 1.5 is out of range"},
		{"negative failure ratio", func(s *api.ServiceSpec) { s.Rollback = &api.UpdateConfig{MaxFailureRatio: -0.1} }, "rollback.max_failure_ratio"},
		{"negative delay", func(s *api.ServiceSpec) { s.Update = &api.UpdateConfig{Delay: durationpb.New(-time.Second)} }, "update.delay"},
		{"negative monitor", func(s *api.ServiceSpec) { s.Update = &api.UpdateConfig{Monitor: durationpb.New(-time.Second)} }, "update.monitor"},
		{"unknown order", func(s *api.ServiceSpec) { s.Update = &api.UpdateConfig{Order: 7} }, "update.order"},
		{"rollback of a rollback", func(s *api.ServiceSpec) {
			s.Rollback = &api.UpdateConfig{FailureAction: api.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK}
		}, "rollback.failure_action: a rollback cannot be rolled back"},
		{"negative restart window", func(s *api.ServiceSpec) {
			s.Task.Restart = &api.RestartPolicy{Window: durationpb.New(-time.Second)}
		}, "task.restart.window"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := spec("web", 1)
			tt.edit(s)
			_, err := c.UpdateService(ctx, &api.UpdateServiceRequest{Service: "web", Spec: s})
			wantCode(t, err, codes.InvalidArgument, tt.mention)
			var after *api.Service
			r.Store().View(func(tx store.ReadTx) { after = tx.Service(svc.GetId()) })
			if !proto.Equal(after, svc) {
				t.Errorf("refused update changed the service")
			}
		})
	}
}

func TestUnknownService(t *testing.T) {
	_, c := setup(t)
	create(t, c, spec("web", 1))
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
	}{
		{"get", func() error {
			_, err := c.GetService(ctx, &api.GetServiceRequest{Service: "nope"})
			return err
		}},
		{"update", func() error {
			_, err := c.UpdateService(ctx, &api.UpdateServiceRequest{Service: "nope", Spec: spec("nope", 1)})
			return err
		}},
		{"remove", func() error {
			_, err := c.RemoveService(ctx, &api.RemoveServiceRequest{Service: "nope"})
			return err
		}},
		{"rollback", func() error {
			_, err := c.RollbackService(ctx, &api.RollbackServiceRequest{Service: "nope"})
			return err
		}},
		{"list tasks", func() error {
			_, err := c.ListTasks(ctx, &api.ListTasksRequest{Service: "nope"})
			return err
		}},
		{"watch tasks", func() error {
			s, err := c.WatchTasks(ctx, &api.WatchTasksRequest{Service: "nope"})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}},
		{"get node", func() error {
			_, err := c.GetNode(ctx, &api.GetNodeRequest{Node: "nope"})
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.call(), codes.NotFound, "nope")
		})
	}
}

// TestBadReference names a service or node in a way that cannot be looked
// up: the caller must fix the request, so InvalidArgument, not Internal.
func TestBadReference(t *testing.T) {
	r, c := setup(t)
	propose(t, r,
		store.Create(&api.Service{Id: "abcd1", Spec: spec("one", 1), SpecVersion: 1}),
		store.Create(&api.Service{Id: "abcd2", Spec: spec("two", 1), SpecVersion: 1}),
		store.Create(&api.Node{Id: "nodea1"}), store.Create(&api.Node{Id: "nodea2"}))
	ctx := context.Background()
	tests := []struct {
		name    string
		call    func() error
		mention string
	}{
		{"empty service", func() error {
			_, err := c.GetService(ctx, &api.GetServiceRequest{})
			return err
		}, "empty"},
		{"ambiguous service prefix", func() error {
			_, err := c.RemoveService(ctx, &api.RemoveServiceRequest{Service: "abcd"})
			return err
		}, "ambiguous"},
		{"ambiguous service in list tasks", func() error {
			_, err := c.ListTasks(ctx, &api.ListTasksRequest{Service: "abcd"})
			return err
		}, "ambiguous"},
		{"empty node", func() error {
			_, err := c.GetNode(ctx, &api.GetNodeRequest{})
			return err
		}, "empty"},
		{"ambiguous node prefix", func() error {
			_, err := c.GetNode(ctx, &api.GetNodeRequest{Node: "nodea"})
			return err
		}, "ambiguous"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.call(), codes.InvalidArgument, tc.mention)
		})
	}
	var n int
	r.Store().View(func(tx store.ReadTx) { n = len(tx.Services()) })
	if n != 2 {
		t.Errorf("%d services left, want 2", n)
	}
}

func TestListServicesCounts(t *testing.T) {
	r, c := setup(t)
	web := create(t, c, spec("web", 3))
	apiSvc := create(t, c, spec("api", 1))
	tk := func(id string, st, desired api.TaskState) *api.StoreAction {
		return store.Create(&api.Task{Id: id, ServiceId: web.GetId(), ServiceName: "web", Slot: 1,
			Status: &api.TaskStatus{State: st}, DesiredState: desired})
	}
	const (
		running  = api.TaskState_TASK_STATE_RUNNING
		shutdown = api.TaskState_TASK_STATE_SHUTDOWN
	)
	propose(t, r,
		tk("w1", running, running),
		tk("w2", running, shutdown), // being stopped: not counted
		tk("w3", api.TaskState_TASK_STATE_FAILED, running),
		tk("w4", api.TaskState_TASK_STATE_STARTING, running),
		tk("w5", running, running))
	unallocated := &api.Task{Id: "w6", ServiceId: web.GetId(), ServiceName: "web", Slot: 3, DesiredState: running,
		Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_NEW, Err: "network allocation failed: no free address"}}
	propose(t, r, store.Create(unallocated), tk("w7", api.TaskState_TASK_STATE_NEW, running)) // w7: waiting, no error

	resp, err := c.ListServices(context.Background(), &api.ListServicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetServices() {
		names = append(names, s.GetSpec().GetName())
	}
	if strings.Join(names, ",") != "api,web" {
		t.Errorf("services = %v, want api,web (by name)", names)
	}
	tests := []struct {
		id                            string
		desired, running, unallocated uint64
	}{
		{web.GetId(), 3, 2, 1},
		{apiSvc.GetId(), 1, 0, 0},
	}
	for _, tc := range tests {
		got := resp.GetCounts()[tc.id]
		if got.GetDesired() != tc.desired || got.GetRunning() != tc.running || got.GetUnallocated() != tc.unallocated {
			t.Errorf("counts of %s = %v, want desired %d running %d unallocated %d", tc.id, got, tc.desired, tc.running, tc.unallocated)
		}
	}
	one, err := c.GetService(context.Background(), &api.GetServiceRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(one.GetCounts(), resp.GetCounts()[web.GetId()]) {
		t.Errorf("GetService counts %v differ from ListServices %v", one.GetCounts(), resp.GetCounts()[web.GetId()])
	}
}

func TestWatchTasks(t *testing.T) {
	r, c := setup(t)
	web := create(t, c, spec("web", 1))
	create(t, c, spec("api", 1))
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	stream, err := c.WatchTasks(ctx, &api.WatchTasksRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() *api.WatchTasksResponse {
		t.Helper()
		msg, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	ids := func(msg *api.WatchTasksResponse) string {
		var out []string
		for _, tk := range msg.GetTasks() {
			out = append(out, tk.GetId()+":"+api.StateName(tk.GetStatus().GetState()))
		}
		return strings.Join(out, ",")
	}

	first := recv()
	if first.GetService().GetId() != web.GetId() || len(first.GetTasks()) != 0 || first.GetRemoved() {
		t.Fatalf("first message = %v, want service web and no tasks", first)
	}

	propose(t, r, store.Create(&api.Task{Id: "w1", ServiceId: web.GetId(), ServiceName: "web", Slot: 1,
		Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_NEW}, DesiredState: api.TaskState_TASK_STATE_RUNNING}))
	if got := ids(recv()); got != "w1:new" {
		t.Errorf("after a task was created: %q, want w1:new", got)
	}

	var w1 *api.Task
	r.Store().View(func(tx store.ReadTx) { w1 = proto.Clone(tx.Task("w1")).(*api.Task) })
	w1.Status.State = api.TaskState_TASK_STATE_PENDING
	propose(t, r, store.Update(w1))
	if got := ids(recv()); got != "w1:pending" {
		t.Errorf("after a task changed: %q, want w1:pending", got)
	}

	if _, err := c.RemoveService(ctx, &api.RemoveServiceRequest{Service: "web"}); err != nil {
		t.Fatal(err)
	}
	last := recv()
	if !last.GetRemoved() || last.GetService().GetId() != web.GetId() {
		t.Errorf("after removal: removed=%v service=%v, want removed and the service", last.GetRemoved(), last.GetService())
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("stream after removal: %v, want it to end", err)
	}
}

func TestListNodesNamesTheAnsweringNode(t *testing.T) {
	r, c := setup(t)
	propose(t, r, store.Create(&api.Node{Id: "m1"}), store.Create(&api.Node{Id: "w1"}))
	var md metadata.MD
	resp, err := c.ListNodes(context.Background(), &api.ListNodesRequest{}, grpc.Header(&md))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetNodes()) != 2 {
		t.Errorf("%d nodes, want 2", len(resp.GetNodes()))
	}
	if got := md.Get(NodeIDHeader); len(got) != 1 || got[0] != "m1" {
		t.Errorf("header %s = %v, want [m1]", NodeIDHeader, got)
	}
}
