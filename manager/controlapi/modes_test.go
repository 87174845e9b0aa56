package controlapi

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

func TestCreateServiceModesInvalid(t *testing.T) {
	_, c := setup(t)
	global := func(s *api.ServiceSpec) { s.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}} }
	tests := []struct {
		name  string
		edit  func(s *api.ServiceSpec)
		field string
	}{
		{"job without completions", func(s *api.ServiceSpec) {
			s.Mode = &api.ServiceSpec_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{}}
		}, "replicated_job.total_completions"},
		{"max per node on a global service", func(s *api.ServiceSpec) {
			global(s)
			s.Task.Placement = &api.Placement{MaxReplicasPerNode: 2}
		}, "task.placement.max_replicas_per_node"},
		{"spread over no label", func(s *api.ServiceSpec) {
			s.Task.Placement = &api.Placement{Preferences: []*api.PlacementPreference{{Spread: "zone"}}}
		}, "task.placement.preferences"},
		{"memory limit below the reservation", func(s *api.ServiceSpec) {
			s.Task.Resources = &api.ResourceRequirements{
				Limits: &api.Resources{MemoryBytes: 64 << 20}, Reservations: &api.Resources{MemoryBytes: 128 << 20},
			}
		}, "task.resources.limits.memory_bytes"},
		{"negative CPU reservation", func(s *api.ServiceSpec) {
			s.Task.Resources = &api.ResourceRequirements{Reservations: &api.Resources{NanoCpus: -1}}
		}, "task.resources.reservations.nano_cpus"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := spec("web", 1)
			tc.edit(s)
			_, err := c.CreateService(context.Background(), &api.CreateServiceRequest{Spec: s})
			wantCode(t, err, codes.InvalidArgument, tc.field)
		})
	}
}

func TestUpdateServiceKeepsMode(t *testing.T) {
	_, c := setup(t)
	svc := create(t, c, spec("web", 2))
	next := proto.CloneOf(svc.GetSpec())
	next.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}}
	_, err := c.UpdateService(context.Background(), &api.UpdateServiceRequest{Service: "web", Spec: next})
	wantCode(t, err, codes.InvalidArgument, "web is replicated and cannot become global")
	got, err := c.GetService(context.Background(), &api.GetServiceRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got.GetService(), svc) {
		t.Errorf("the refused update changed the service")
	}
}

func TestServiceCountsOfModes(t *testing.T) {
	r, c := setup(t)
	globalSpec := spec("agent", 0)
	globalSpec.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}}
	agent := create(t, c, globalSpec)
	jobSpec := spec("batch", 0)
	jobSpec.Mode = &api.ServiceSpec_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{TotalCompletions: 5, MaxConcurrent: 3}}
	batch := create(t, c, jobSpec)
	gjSpec := spec("sweep", 0)
	gjSpec.Mode = &api.ServiceSpec_GlobalJob{GlobalJob: &api.GlobalJob{}}
	sweep := create(t, c, gjSpec)

	const (
		running  = api.TaskState_TASK_STATE_RUNNING
		complete = api.TaskState_TASK_STATE_COMPLETE
		shutdown = api.TaskState_TASK_STATE_SHUTDOWN
	)
	tk := func(svc *api.Service, id, node string, slot uint64, st, desired api.TaskState) *api.StoreAction {
		return store.Create(&api.Task{Id: id, ServiceId: svc.GetId(), ServiceName: svc.GetSpec().GetName(), NodeId: node, Slot: slot,
			SpecVersion: svc.GetSpecVersion(), Status: &api.TaskStatus{State: st}, DesiredState: desired})
	}
	propose(t, r,
		tk(agent, "a1", "n1", 0, running, running),
		tk(agent, "a2", "n2", 0, api.TaskState_TASK_STATE_PENDING, running),
		tk(agent, "a3", "n3", 0, shutdown, shutdown), // a drained node's: not desired
		tk(batch, "b1", "n1", 1, complete, shutdown),
		tk(batch, "b2", "n1", 2, complete, shutdown),
		tk(batch, "b3", "n2", 3, running, running),
		tk(batch, "b4", "n2", 3, api.TaskState_TASK_STATE_FAILED, shutdown),
		tk(sweep, "s1", "n1", 0, complete, shutdown),
		tk(sweep, "s2", "n2", 0, running, running),
	)
	resp, err := c.ListServices(context.Background(), &api.ListServicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		svc  *api.Service
		want *api.ServiceCounts
	}{
		{agent, &api.ServiceCounts{Desired: 2, Running: 1}},
		// 2 of 5 done: 3 more may run at once.
		{batch, &api.ServiceCounts{Desired: 3, Running: 1, Completed: 2, Completions: 5}},
		{sweep, &api.ServiceCounts{Desired: 1, Running: 1, Completed: 1, Completions: 2}},
	}
	for _, tc := range tests {
		if got := resp.GetCounts()[tc.svc.GetId()]; !proto.Equal(got, tc.want) {
			t.Errorf("counts of %s = %v, want %v", tc.svc.GetSpec().GetName(), got, tc.want)
		}
	}
}

func TestGetNodeReserved(t *testing.T) {
	r, c := setup(t)
	node := &api.Node{Id: "n1", Description: &api.NodeDescription{Hostname: "worker1", NanoCpus: 4e9, MemoryBytes: 8 << 30}}
	res := func(id string, st, desired api.TaskState, cpu, mem int64) *api.StoreAction {
		return store.Create(&api.Task{Id: id, ServiceId: "s", NodeId: "n1", DesiredState: desired,
			Status: &api.TaskStatus{State: st},
			Spec:   &api.TaskSpec{Resources: &api.ResourceRequirements{Reservations: &api.Resources{NanoCpus: cpu, MemoryBytes: mem}}}})
	}
	const running = api.TaskState_TASK_STATE_RUNNING
	propose(t, r, store.Create(node),
		res("t1", running, running, 5e8, 1<<30),
		res("t2", api.TaskState_TASK_STATE_ASSIGNED, running, 1e9, 0),
		res("t3", api.TaskState_TASK_STATE_FAILED, api.TaskState_TASK_STATE_SHUTDOWN, 2e9, 2<<30), // ended: frees its share
		res("t4", api.TaskState_TASK_STATE_PENDING, running, 1e9, 1<<30),                          // not assigned yet
	)
	got, err := c.GetNode(context.Background(), &api.GetNodeRequest{Node: "worker1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (&api.Resources{NanoCpus: 15e8, MemoryBytes: 1 << 30}); !proto.Equal(got.GetReserved(), want) {
		t.Errorf("reserved = %v, want %v", got.GetReserved(), want)
	}
}
