package manager

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// benchManager is a real single-voter manager (raft with its boltdb log
// on disk) holding nodes ready nodes and pending tasks of one service per
// 100 tasks.
func benchManager(b *testing.B, nodes, tasks int) *Manager {
	b.Helper()
	ctx := context.Background()
	self := &api.Node{Id: "node0000", Role: api.NodeRole_NODE_ROLE_MANAGER,
		Spec:   &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
		Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}}
	m, err := Init(ctx, Config{DataDir: b.TempDir(), NodeID: self.Id, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil, self, Ingress{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	var acts []*api.StoreAction
	for i := 1; i < nodes; i++ {
		acts = append(acts, store.Create(&api.Node{Id: fmt.Sprintf("node%04d", i),
			Spec:        &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
			Description: &api.NodeDescription{Hostname: fmt.Sprintf("host%d", i)},
			Status:      &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}}))
	}
	now := timestamppb.Now()
	for i := 0; i < tasks; i++ {
		svc := fmt.Sprintf("svc%03d", i/100)
		acts = append(acts, store.Create(&api.Task{Id: fmt.Sprintf("task%06d", i), ServiceId: svc, ServiceName: svc,
			Slot: uint64(i%100 + 1), DesiredState: api.TaskState_TASK_STATE_RUNNING, Meta: &api.Meta{CreatedAt: now},
			Spec:   &api.TaskSpec{Container: &api.ContainerSpec{Image: "x"}},
			Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_PENDING, Timestamp: now}}))
	}
	if err := m.raft.ProposeBatches(ctx, acts); err != nil {
		b.Fatal(err)
	}
	return m
}

func benchmarkScheduleCommit(b *testing.B, nodes, tasks int) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		m := benchManager(b, nodes, tasks)
		b.StartTimer()
		start := time.Now()
		placed, unplaced, err := newSchedulerController(m).placePending(context.Background())
		elapsed := time.Since(start)
		if err != nil || placed != tasks || unplaced != 0 {
			b.Fatalf("placed %d, unplaced %d, err %v", placed, unplaced, err)
		}
		b.ReportMetric(float64(tasks)/elapsed.Seconds(), "tasks/s")
	}
}

// The scheduler's throughput including reading the store and committing
// every assignment through raft to disk.
func BenchmarkScheduleCommit1kNodes10kTasks(b *testing.B)  { benchmarkScheduleCommit(b, 1000, 10000) }
func BenchmarkScheduleCommit1kNodes100kTasks(b *testing.B) { benchmarkScheduleCommit(b, 1000, 100000) }
