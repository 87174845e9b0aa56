package ctl

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/golden"
)

// TestUpdateBuildsSpec runs `service update -d` with flags against the
// fixture's web service and checks the spec sent: what the flags say
// changed, the rest as it was.
func TestUpdateBuildsSpec(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want func(s *api.ServiceSpec)
	}{
		{"image", []string{"--image", "nginx:1.28"}, func(s *api.ServiceSpec) { s.Task.Container.Image = "nginx:1.28" }},
		{"args replaced and cleared", []string{"--args", "-g  'daemon on;'"}, func(s *api.ServiceSpec) { s.Task.Container.Args = []string{"-g", "'daemon", "on;'"} }},
		{"args cleared", []string{"--args", ""}, func(s *api.ServiceSpec) { s.Task.Container.Args = nil }},
		{"entrypoint", []string{"--entrypoint", "/bin/sh -c"}, func(s *api.ServiceSpec) { s.Task.Container.Command = []string{"/bin/sh", "-c"} }},
		{"user, workdir, hostname", []string{"-u", "nobody", "-w", "/srv", "--hostname", "h"}, func(s *api.ServiceSpec) {
			s.Task.Container.User, s.Task.Container.Dir, s.Task.Container.Hostname = "nobody", "/srv", "h"
		}},
		{"env added, replaced and removed", []string{"--env-add", "A=1", "--env-add", "MODE=dev", "--env-rm", "NOPE"}, func(s *api.ServiceSpec) {
			s.Task.Container.Env = []string{"A=1", "MODE=dev"}
		}},
		{"env removed", []string{"--env-rm", "MODE"}, func(s *api.ServiceSpec) { s.Task.Container.Env = nil }},
		{"labels", []string{"--label-add", "tier=back", "--label-add", "new=1", "--label-rm", "owner"}, func(s *api.ServiceSpec) {
			s.Labels = map[string]string{"tier": "back", "new": "1"}
		}},
		{"constraints", []string{"--constraint-rm", "node.labels.zone==eu", "--constraint-add", "node.role!=manager"}, func(s *api.ServiceSpec) {
			s.Task.Placement.Constraints = []string{"node.role!=manager"}
		}},
		{"constraint already there", []string{"--constraint-add", "node.labels.zone==eu"}, func(*api.ServiceSpec) {}},
		{"publish added", []string{"--publish-add", "8080:80"}, func(s *api.ServiceSpec) {
			s.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{Protocol: "tcp", Target: 80, Published: 8080, Mode: "ingress"}}}
		}},
		{"networks", []string{"--network-add", "backend", "--network-rm", "front"}, func(s *api.ServiceSpec) {
			s.Networks = []string{"backend"}
		}},
		{"replicas", []string{"--replicas", "5"}, func(s *api.ServiceSpec) { s.GetReplicated().Replicas = 5 }},
		{"restart policy, window included", []string{"--restart-condition", "any", "--restart-window", "1m", "--restart-max-attempts", "3"}, func(s *api.ServiceSpec) {
			s.Task.Restart.Condition = api.RestartCondition_RESTART_CONDITION_ANY
			s.Task.Restart.Window = durationpb.New(time.Minute)
			s.Task.Restart.MaxAttempts = 3
		}},
		{"stop grace", []string{"--stop-grace-period", "3s"}, func(s *api.ServiceSpec) { s.Task.Container.StopGracePeriod = durationpb.New(3 * time.Second) }},
		{"update config from the defaults", []string{"--update-parallelism", "2", "--update-order", "start-first", "--update-failure-action", "rollback", "--update-max-failure-ratio", "0.25"}, func(s *api.ServiceSpec) {
			s.Update = api.DefaultUpdateConfig()
			s.Update.Parallelism = 2
			s.Update.Order = api.UpdateOrder_UPDATE_ORDER_START_FIRST
			s.Update.FailureAction = api.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK
			s.Update.MaxFailureRatio = 0.25
		}},
		{"rollback config", []string{"--rollback-parallelism", "0", "--rollback-delay", "2s", "--rollback-monitor", "1s"}, func(s *api.ServiceSpec) {
			s.Rollback = api.DefaultUpdateConfig()
			s.Rollback.Parallelism = 0
			s.Rollback.Delay = durationpb.New(2 * time.Second)
			s.Rollback.Monitor = durationpb.New(time.Second)
		}},
		{"force", []string{"--force"}, func(s *api.ServiceSpec) { s.Task.ForceUpdate = 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			f.networks = []*api.Network{{Id: "netfrontaaaaaaaaaaaaaaaaaa", Spec: &api.NetworkSpec{Name: "front"}}}
			web, _ := f.lookup("web")
			web.Spec.Networks = []string{"netfrontaaaaaaaaaaaaaaaaaa"}
			want := proto.CloneOf(web.GetSpec())
			tt.want(want)
			out, err := runCLI(t, f, append(append([]string{"service", "update", "-d"}, tt.args...), "web")...)
			if err != nil {
				t.Fatal(err)
			}
			if out != "web\n" {
				t.Errorf("output %q, want the service's name", out)
			}
			if proto.Equal(want, web.GetSpec()) {
				if len(f.updates) != 0 {
					t.Errorf("an update that changes nothing was sent")
				}
				return
			}
			if len(f.updates) != 1 {
				t.Fatalf("%d updates sent", len(f.updates))
			}
			if got := f.updates[0]; !proto.Equal(got.GetSpec(), want) || got.GetVersion() != web.GetMeta().GetVersion() {
				t.Errorf("sent (version %d)\n%s\nwant (version %d)\n%s", got.GetVersion(), protojson.Format(got.GetSpec()), web.GetMeta().GetVersion(), protojson.Format(want))
			}
		})
	}
}

func TestUpdateServerErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"unknown service", []string{"service", "update", "--image", "x", "nope"}, `service "nope": not found`},
		{"replicas of a service that has none", []string{"service", "update", "--replicas", "2", "job"}, "--replicas: service job is not a replicated service"},
		{"replicas of a global service", []string{"service", "update", "--replicas", "2", "agent"}, "--replicas: service agent is global: it runs one task on every eligible node"},
		{"rollback of a service never updated", []string{"service", "rollback", "web"}, `service "web" has no previous spec to roll back to: it was never updated`},
		{"rollback of an unknown service", []string{"service", "rollback", "nope"}, `service "nope": not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			f.services = append(f.services, &api.Service{Id: "svcjobcccccccccccccccccccc", Meta: &api.Meta{Version: 3}, Spec: &api.ServiceSpec{Name: "job"}},
				&api.Service{Id: "svcagentccccccccccccccccccc", Meta: &api.Meta{Version: 3}, Spec: &api.ServiceSpec{Name: "agent", Mode: &api.ServiceSpec_Global{Global: &api.GlobalService{}}}})
			_, err := runCLI(t, f, tt.args...)
			if got := ErrorMessage(err); got != tt.wantErr {
				t.Errorf("error = %q, want %q", got, tt.wantErr)
			}
			if len(f.updates) != 0 {
				t.Errorf("sent %d updates", len(f.updates))
			}
		})
	}
	// An update that lost a race with the managers is read again.
	f := newFixture()
	f.updateErrs = []error{status.Error(codes.Aborted, "changed since read")}
	if _, err := runCLI(t, f, "service", "update", "-d", "--image", "x", "web"); err != nil || len(f.updates) != 2 {
		t.Errorf("after a lost race: %d updates, error %v", len(f.updates), err)
	}
}

// rolloutSnapshot is a WatchTasks message of web (spec versions 2 → 11,
// as the fake's update makes them) in the middle of a rollout: a task per
// slot, at the version and state given, and the status.
func rolloutSnapshot(specVersion uint64, st *api.UpdateStatus, ks ...tk) *api.WatchTasksResponse {
	svc := watchedService(3)
	svc.Id, svc.Meta.Version, svc.SpecVersion, svc.UpdateStatus = svcWeb, 11, specVersion, st
	return &api.WatchTasksResponse{Service: svc, Tasks: tasks(ks...)}
}

func status3(state api.UpdateState, version, updated uint64, msg string) *api.UpdateStatus {
	return &api.UpdateStatus{State: state, SpecVersion: version, Updated: updated, Message: msg}
}

func TestUpdateWaits(t *testing.T) {
	const (
		updating  = api.UpdateState_UPDATE_STATE_UPDATING
		completed = api.UpdateState_UPDATE_STATE_COMPLETED
		paused    = api.UpdateState_UPDATE_STATE_PAUSED
		rbStarted = api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED
		rbDone    = api.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED
	)
	old := func(slot uint64) tk { return tk{slot: slot, state: stRunning, spec: 2, version: 9} }
	cur := func(slot uint64, state api.TaskState) tk { return tk{slot: slot, state: state, spec: 11, version: 12} }
	tests := []struct {
		name    string
		script  []*api.WatchTasksResponse
		wantErr string
	}{
		{
			name: "update_wait_completed",
			script: []*api.WatchTasksResponse{
				rolloutSnapshot(11, status3(updating, 11, 0, "update in progress"), cur(1, stPreparing), old(2), old(3)),
				rolloutSnapshot(11, status3(updating, 11, 0, "update in progress"), cur(1, stRunning), cur(2, stStarting), old(3)),
				rolloutSnapshot(11, status3(updating, 11, 2, "update in progress"), cur(1, stRunning), cur(2, stRunning), cur(3, stRunning)),
				rolloutSnapshot(11, status3(completed, 11, 3, "update completed"), cur(1, stRunning), cur(2, stRunning), cur(3, stRunning)),
			},
		},
		{
			name: "update_wait_paused",
			script: []*api.WatchTasksResponse{
				rolloutSnapshot(11, status3(updating, 11, 0, "update in progress"), cur(1, stStarting), old(2), old(3)),
				rolloutSnapshot(11, status3(paused, 11, 0, "update paused: task web.1.task1faixxxxxxxxxxxxxxxx failed: task: non-zero exit (1)"),
					tk{slot: 1, state: stFailed, spec: 11, version: 13, err: "task: non-zero exit (1)"}, old(2), old(3)),
			},
			wantErr: "update paused: task web.1.task1faixxxxxxxxxxxxxxxx failed: task: non-zero exit (1)\n" +
				"service web stays paused: fix what failed and resume with `shoalctl service update --force web`, or return to the previous spec with `shoalctl service rollback web`",
		},
		{
			name: "update_wait_rolled_back",
			script: []*api.WatchTasksResponse{
				rolloutSnapshot(11, status3(updating, 11, 0, "update in progress"), cur(1, stStarting), old(2), old(3)),
				rolloutSnapshot(2, status3(rbStarted, 2, 0, "update rolled back: task web.1.x failed: exit 1"), tk{slot: 1, state: stNew, spec: 2, version: 14}, old(2), old(3)),
				rolloutSnapshot(2, status3(rbDone, 2, 0, "rollback completed: update rolled back: task web.1.x failed: exit 1"), tk{slot: 1, state: stRunning, spec: 2, version: 15}, old(2), old(3)),
			},
			wantErr: "rollback completed: update rolled back: task web.1.x failed: exit 1\nservice web runs its previous spec again",
		},
		{
			name: "update_wait_superseded",
			script: []*api.WatchTasksResponse{
				rolloutSnapshot(11, status3(updating, 11, 0, "update in progress"), cur(1, stStarting), old(2), old(3)),
				rolloutSnapshot(14, status3(updating, 14, 0, "update in progress"), old(1), old(2), old(3)),
			},
			wantErr: "service web was changed again while waiting (spec version 14); follow it with `shoalctl service ps web`",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			f.watch = map[string][]*api.WatchTasksResponse{svcWeb: tt.script}
			out, err := runCLI(t, f, "service", "update", "--image", "nginx:1.28", "web")
			if tt.wantErr == "" && err != nil {
				t.Fatalf("error: %v", err)
			}
			if tt.wantErr != "" && ErrorMessage(err) != tt.wantErr {
				t.Errorf("error = %q\nwant    %q", ErrorMessage(err), tt.wantErr)
			}
			golden.Check(t, tt.name, out)
		})
	}
}

// updatedWeb is the fixture's web service as an update from nginx:1.26
// (spec version 1) left it.
func updatedWeb(f *fakeControl) *api.Service {
	web, _ := f.lookup("web")
	web.PreviousSpec = proto.CloneOf(web.GetSpec())
	web.PreviousSpec.Task.Container.Image = "nginx:1.26"
	web.PreviousSpecVersion = 1
	return web
}

func TestRollbackWaits(t *testing.T) {
	f := newFixture()
	updatedWeb(f)
	back := func(state api.UpdateState, updated uint64, msg string, ks ...tk) *api.WatchTasksResponse {
		return rolloutSnapshot(1, status3(state, 1, updated, msg), ks...)
	}
	f.watch = map[string][]*api.WatchTasksResponse{svcWeb: {
		back(api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED, 0, "manually requested rollback",
			tk{slot: 1, state: stPending, spec: 1, version: 12}, tk{slot: 2, state: stRunning, spec: 2}, tk{slot: 3, state: stRunning, spec: 2}),
		back(api.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, 3, "rollback completed: manually requested rollback",
			tk{slot: 1, state: stRunning, spec: 1, version: 12}, tk{slot: 2, state: stRunning, spec: 1, version: 13}, tk{slot: 3, state: stRunning, spec: 1, version: 14}),
	}}
	out, err := runCLI(t, f, "service", "rollback", "web")
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "rollback_wait_completed", out)
}

// TestInspectRollout shows a service in the middle of an update with
// --pretty: its update and rollback configs, the rollout's status and the
// previous spec.
func TestInspectRollout(t *testing.T) {
	f := newFixture()
	web := updatedWeb(f)
	web.Spec.Task.Restart.Window = durationpb.New(time.Minute)
	web.Spec.Update = &api.UpdateConfig{Parallelism: 2, Delay: durationpb.New(time.Second), Monitor: durationpb.New(5 * time.Second),
		FailureAction: api.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK, MaxFailureRatio: 0.2, Order: api.UpdateOrder_UPDATE_ORDER_START_FIRST}
	web.Spec.Rollback = api.DefaultUpdateConfig()
	web.Spec.Rollback.Parallelism = 0
	web.UpdateStatus = &api.UpdateStatus{
		State: api.UpdateState_UPDATE_STATE_PAUSED, SpecVersion: 2,
		StartedAt: timestamppb.New(fixedNow.Add(-time.Minute)),
		Message:   "update paused: task web.2.x failed: task: non-zero exit (1)",
		Updated:   1, Failures: 1,
		Slots: []*api.UpdateSlot{{Slot: 2, Phase: api.UpdatePhase_UPDATE_PHASE_FAILED}, {Slot: 3, Phase: api.UpdatePhase_UPDATE_PHASE_STARTING}},
	}
	out, err := runCLI(t, f, "service", "inspect", "--pretty", "web")
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "service_inspect_rollout_pretty", out)
}
