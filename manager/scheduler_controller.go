package manager

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/scheduler"
)

// schedulerRetry re-runs the scheduler while tasks wait for a node, in
// case something it cannot see as an event changed.
const schedulerRetry = time.Second

// schedulerController assigns PENDING tasks to nodes: the decisions are
// the scheduler's (package scheduler), the reads and commits its own.
type schedulerController struct {
	m     *Manager
	log   *slog.Logger
	sched *scheduler.Scheduler
}

func newSchedulerController(m *Manager) *schedulerController {
	return &schedulerController{m: m, log: m.logger.With("component", "scheduler"), sched: scheduler.New()}
}

func (c *schedulerController) pass(ctx context.Context) time.Time {
	_, unplaced, err := c.placePending(ctx)
	switch {
	case err != nil:
		if ctx.Err() != nil {
			return time.Time{}
		}
		c.log.Warn("commit assignments; retrying", "err", err)
		return time.Now().Add(retryDelay)
	case unplaced > 0:
		return time.Now().Add(schedulerRetry)
	}
	return time.Time{}
}

// changed asks for a pass on changes that may let the scheduler place
// something: new pending tasks, node changes, or tasks leaving nodes.
func (c *schedulerController) changed(changes []store.Change) bool {
	return store.Affects(changes, func(ev store.Event) bool {
		switch o := ev.Object.(type) {
		case *api.Node:
			return true
		case *api.Task:
			return o.GetStatus().GetState() == api.TaskState_TASK_STATE_PENDING || api.IsTerminal(o.GetStatus().GetState()) ||
				ev.Kind == api.StoreActionKind_STORE_ACTION_KIND_REMOVE
		}
		return false
	})
}

// placePending runs one scheduling pass over the store: every PENDING task
// gets a node (committed through raft) or an explanation.
func (c *schedulerController) placePending(ctx context.Context) (placed, unplaced int, err error) {
	var (
		pending  []*api.Task
		nodes    []*api.Node
		busy     []*api.Task
		networks []*api.Network
	)
	c.m.raft.Store().View(func(tx store.ReadTx) {
		nodes = tx.Nodes()
		networks = tx.Networks()
		for _, t := range tx.Tasks() {
			switch {
			case scheduler.Occupies(t):
				busy = append(busy, t)
			case scheduler.Schedulable(t):
				pending = append(pending, t)
			}
		}
	})
	if len(pending) == 0 {
		return 0, 0, nil
	}
	c.sched.Sync(nodes, busy)
	c.sched.SyncNetworks(networks)
	now := timestamppb.Now()
	actions := make([]*api.StoreAction, 0, len(pending))
	for _, d := range c.sched.Schedule(pending) {
		upd := proto.Clone(d.Task).(*api.Task)
		if d.NodeID == "" {
			unplaced++
			if d.Task.GetStatus().GetErr() == d.Explanation {
				continue
			}
			upd.Status.Err = d.Explanation
			upd.Status.Timestamp = now
		} else {
			placed++
			upd.NodeId = d.NodeID
			upd.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_ASSIGNED, Message: "scheduled", Timestamp: now}
		}
		upd.Meta.UpdatedAt = now
		actions = append(actions, store.Update(upd))
	}
	return placed, unplaced, c.m.raft.ProposeBatches(ctx, actions)
}
