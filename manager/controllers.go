package manager

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator/stored"
	"github.com/shoal-project/shoal/manager/orchestrator"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/scheduler"
)

const (
	// retryDelay is the pause before a controller retries a failed write.
	retryDelay = 50 * time.Millisecond
	// schedulerRetry re-runs the scheduler while tasks wait for a node,
	// in case something it cannot see as an event changed.
	schedulerRetry = time.Second
)

// wait blocks until the subscription has changes, the timer fires, or ctx
// ends (false).
func wait(ctx context.Context, sub *store.Subscription, wake time.Time) bool {
	var timer <-chan time.Time
	if !wake.IsZero() {
		t := time.NewTimer(time.Until(wake))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-sub.Ready():
	case <-timer:
	}
	return true
}

// runOrchestrator keeps every service's tasks matching its spec: it
// reconciles each service that an event touched.
func (m *Manager) runOrchestrator(ctx context.Context) {
	sub := m.raft.Store().Subscribe()
	defer sub.Close()
	log := m.logger.With("component", "orchestrator")
	dirty := map[string]bool{}
	markAll := func() {
		m.raft.Store().View(func(tx store.ReadTx) {
			for _, s := range tx.Services() {
				dirty[s.GetId()] = true
			}
			for _, t := range tx.Tasks() {
				dirty[t.GetServiceId()] = true
			}
		})
	}
	markAll()
	wakes := map[string]time.Time{}
	for {
		now := time.Now()
		for id, at := range wakes {
			if !at.After(now) {
				dirty[id] = true
				delete(wakes, id)
			}
		}
		for id := range dirty {
			var (
				svc   *api.Service
				tasks []*api.Task
				nodes = map[string]*api.Node{}
				cfg   = m.cfg.Orchestrator
			)
			m.raft.Store().View(func(tx store.ReadTx) {
				svc = tx.Service(id)
				tasks = tx.TasksOfService(id)
				for _, n := range tx.Nodes() {
					nodes[n.GetId()] = n
				}
				if cfg.TaskHistoryLimit == 0 {
					cfg.TaskHistoryLimit = int(tx.Cluster().GetSpec().GetOrchestration().GetTaskHistoryLimit())
				}
			})
			delete(dirty, id)
			if svc == nil && len(tasks) == 0 {
				continue
			}
			plan := orchestrator.Reconcile(now, cfg, svc, tasks, nodes)
			if !plan.Wake.IsZero() {
				wakes[id] = plan.Wake
			}
			if plan.Empty() {
				continue
			}
			actions := make([]*api.StoreAction, 0, len(plan.Create)+len(plan.Update)+len(plan.Remove))
			ts := timestamppb.New(now)
			for _, t := range plan.Create {
				t.Meta = &api.Meta{CreatedAt: ts}
				actions = append(actions, store.Create(t))
			}
			for _, t := range plan.Update {
				t.Meta.UpdatedAt = ts
				actions = append(actions, store.Update(t))
			}
			for _, t := range plan.Remove {
				actions = append(actions, store.Remove(t))
			}
			if err := m.raft.ProposeBatches(ctx, actions); err != nil {
				if ctx.Err() != nil {
					return
				}
				log.Warn("apply reconcile plan; retrying", "service", id, "err", err)
				wakes[id] = time.Now().Add(retryDelay)
			}
		}
		var next time.Time
		for _, at := range wakes {
			if next.IsZero() || at.Before(next) {
				next = at
			}
		}
		if !wait(ctx, sub, next) {
			return
		}
		for _, c := range sub.Next() {
			if c.Reset {
				markAll()
				continue
			}
			for _, ev := range c.Events {
				switch o := ev.Object.(type) {
				case *api.Service:
					dirty[o.GetId()] = true
				case *api.Task:
					dirty[o.GetServiceId()] = true
				case *api.Node:
					old, _ := ev.Old.(*api.Node)
					if ev.Kind == api.StoreActionKind_STORE_ACTION_KIND_REMOVE ||
						old.GetStatus().GetState() != o.GetStatus().GetState() ||
						old.GetSpec().GetAvailability() != o.GetSpec().GetAvailability() {
						m.raft.Store().View(func(tx store.ReadTx) {
							for _, t := range tx.TasksOfNode(o.GetId()) {
								dirty[t.GetServiceId()] = true
							}
						})
					}
				}
			}
		}
	}
}

// allocRetry is how long a task whose network allocation failed (an
// exhausted subnet, a service not allocated) waits before the next try,
// unless something that may free addresses happens first. Each try
// rebuilds the allocator from the store, so not much more often than this.
const allocRetry = time.Second

// runAllocator moves NEW tasks to PENDING once their restart delay has
// passed, with an address and MAC on every network of their service's
// endpoint (ingress included) stored on the task in the same update. A
// task that cannot be allocated stays NEW, says why in its status, and is
// tried again. It also gives every node its address on the ingress
// network.
//
// The allocator is rebuilt from the store for each batch rather than kept
// up to date from events: the store is the only truth, a new leader needs
// nothing else, and freeing is implicit (removed tasks and nodes, and
// terminal tasks, hold nothing; see stored.Allocation).
func (m *Manager) runAllocator(ctx context.Context) {
	sub := m.raft.Store().Subscribe()
	defer sub.Close()
	log := m.logger.With("component", "allocator")
	var (
		candidates = map[string]bool{}
		// failed holds tasks whose last allocation failed: they are tried
		// again at retryAt, or as soon as addresses may have been freed.
		failed     = map[string]bool{}
		retryAt    time.Time
		nodesDirty bool
		lastErr    string
	)
	scanAll := func() {
		m.raft.Store().View(func(tx store.ReadTx) {
			for _, t := range tx.Tasks() {
				if t.GetStatus().GetState() == api.TaskState_TASK_STATE_NEW {
					candidates[t.GetId()] = true
				}
			}
		})
		nodesDirty = true
		clear(failed)
	}
	scanAll()
	for {
		now := time.Now()
		var (
			due  []string
			next time.Time
		)
		if !retryAt.IsZero() && !now.Before(retryAt) {
			clear(failed)
			retryAt = time.Time{}
		}
		m.raft.Store().View(func(tx store.ReadTx) {
			for id := range candidates {
				t := tx.Task(id)
				if t == nil || !stored.Waiting(t) {
					delete(candidates, id)
					delete(failed, id)
					continue
				}
				if nb := t.GetNotBefore(); nb != nil && nb.AsTime().After(now) {
					if next.IsZero() || nb.AsTime().Before(next) {
						next = nb.AsTime()
					}
					continue
				}
				if !failed[id] {
					due = append(due, id)
				}
			}
		})
		if len(due) > 0 || nodesDirty {
			res, err := m.networks.AllocateTasks(ctx, due, nodesDirty)
			switch {
			case err != nil:
				if ctx.Err() != nil {
					return
				}
				log.Warn("allocate networks; retrying", "err", err)
				scanAll()
				next = time.Now().Add(retryDelay)
			default:
				for _, id := range due {
					if !res.Failed[id] {
						delete(candidates, id)
					}
				}
				for id := range res.Failed {
					failed[id] = true
				}
				nodesDirty = res.NodesFailed
				if len(failed) > 0 || nodesDirty {
					retryAt = time.Now().Add(allocRetry)
				}
			}
			if res.RestoreErr != "" && res.RestoreErr != lastErr {
				log.Warn("stored network allocations clash; the objects named were skipped", "err", res.RestoreErr)
			}
			lastErr = res.RestoreErr
		}
		if !retryAt.IsZero() && (next.IsZero() || retryAt.Before(next)) {
			next = retryAt
		}
		if !wait(ctx, sub, next) {
			return
		}
		for _, c := range sub.Next() {
			if c.Reset {
				scanAll()
				continue
			}
			for _, ev := range c.Events {
				removed := ev.Kind == api.StoreActionKind_STORE_ACTION_KIND_REMOVE
				switch o := ev.Object.(type) {
				case *api.Task:
					if !removed && o.GetStatus().GetState() == api.TaskState_TASK_STATE_NEW {
						candidates[o.GetId()] = true
					}
					if len(o.GetNetworks()) > 0 && (removed || api.IsTerminal(o.GetStatus().GetState())) {
						clear(failed) // addresses were freed
					}
				case *api.Service:
					clear(failed) // a service allocated, changed or gone
				case *api.Network:
					clear(failed)
					nodesDirty = true // the ingress network may be new
				case *api.Node:
					if removed {
						clear(failed)
					} else if o.GetIngress() == nil {
						nodesDirty = true
					}
				}
			}
		}
	}
}

// occupies reports whether a task counts against its node.
func occupies(t *api.Task) bool {
	return t.GetNodeId() != "" && t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && !api.IsTerminal(t.GetStatus().GetState())
}

// placePending runs one scheduling pass over the store: every PENDING task
// gets a node (committed through raft) or an explanation.
func (m *Manager) placePending(ctx context.Context, sched *scheduler.Scheduler) (placed, unplaced int, err error) {
	var (
		pending []*api.Task
		nodes   []*api.Node
		busy    []*api.Task
	)
	m.raft.Store().View(func(tx store.ReadTx) {
		nodes = tx.Nodes()
		for _, t := range tx.Tasks() {
			switch {
			case occupies(t):
				busy = append(busy, t)
			case t.GetNodeId() == "" && t.GetStatus().GetState() == api.TaskState_TASK_STATE_PENDING &&
				t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING:
				pending = append(pending, t)
			}
		}
	})
	if len(pending) == 0 {
		return 0, 0, nil
	}
	sched.Sync(nodes, busy)
	now := timestamppb.Now()
	actions := make([]*api.StoreAction, 0, len(pending))
	for _, d := range sched.Schedule(pending) {
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
	return placed, unplaced, m.raft.ProposeBatches(ctx, actions)
}

// runScheduler assigns PENDING tasks to nodes.
func (m *Manager) runScheduler(ctx context.Context) {
	sub := m.raft.Store().Subscribe()
	defer sub.Close()
	log := m.logger.With("component", "scheduler")
	sched := scheduler.New()
	for {
		if !m.schedulePass(ctx, sub, sched, log) {
			return
		}
	}
}

// schedulerRelevant matches events that may let the scheduler place
// something: new pending tasks, node changes, or tasks leaving nodes.
func schedulerRelevant(ev store.Event) bool {
	switch o := ev.Object.(type) {
	case *api.Node:
		return true
	case *api.Task:
		return o.GetStatus().GetState() == api.TaskState_TASK_STATE_PENDING || api.IsTerminal(o.GetStatus().GetState()) ||
			ev.Kind == api.StoreActionKind_STORE_ACTION_KIND_REMOVE
	}
	return false
}

// schedulePass places what is pending, then waits for a reason to look
// again. It returns false when ctx ends.
func (m *Manager) schedulePass(ctx context.Context, sub *store.Subscription, sched *scheduler.Scheduler, log *slog.Logger) bool {
	{
		var next time.Time
		_, unplaced, err := m.placePending(ctx, sched)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return false
			}
			log.Warn("commit assignments; retrying", "err", err)
			next = time.Now().Add(retryDelay)
		case unplaced > 0:
			next = time.Now().Add(schedulerRetry)
		}
		for {
			if !wait(ctx, sub, next) {
				return false
			}
			if !next.IsZero() && !time.Now().Before(next) {
				return true
			}
			if store.Affects(sub.Next(), schedulerRelevant) {
				return true
			}
		}
	}
}

// managerStatusPeriod is how often the leader refreshes the managers'
// status (leader flag, reachability) shown by `node ls`.
const managerStatusPeriod = time.Second

// runManagerStatus keeps each manager node's ManagerStatus true: which one
// leads, and which are reachable (a raft member whose node is ready).
func (m *Manager) runManagerStatus(ctx context.Context) {
	t := time.NewTicker(managerStatusPeriod)
	defer t.Stop()
	for {
		members, err := m.raft.Members()
		if err == nil {
			var actions []*api.StoreAction
			m.raft.Store().View(func(tx store.ReadTx) {
				for _, n := range tx.Nodes() {
					addr, member := members[n.GetId()]
					if !member && n.GetRole() != api.NodeRole_NODE_ROLE_MANAGER {
						continue
					}
					want := &api.ManagerStatus{
						RaftAddr:  addr,
						Leader:    n.GetId() == m.cfg.NodeID,
						Reachable: n.GetId() == m.cfg.NodeID || n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY,
					}
					if !member {
						want.Reachable = false
						want.RaftAddr = n.GetManagerStatus().GetRaftAddr()
					}
					// A raft member meant to be a manager is one, even if
					// recording its promotion lost a race (membership.Join).
					promoted := member && n.GetRole() != api.NodeRole_NODE_ROLE_MANAGER &&
						n.GetSpec().GetDesiredRole() == api.NodeRole_NODE_ROLE_MANAGER
					if proto.Equal(want, n.GetManagerStatus()) && !promoted {
						continue
					}
					upd := proto.Clone(n).(*api.Node)
					upd.ManagerStatus = want
					if promoted {
						upd.Role = api.NodeRole_NODE_ROLE_MANAGER
					}
					actions = append(actions, store.Update(upd))
				}
			})
			if err := m.raft.ProposeBatches(ctx, actions); err != nil && ctx.Err() == nil {
				m.logger.Debug("update manager status", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runRoles carries out demotions: a manager whose desired role is worker
// leaves the raft group (the leader hands over leadership first when it is
// the one demoted) and becomes a worker in the store. Its node then
// renews its certificate as a worker and restarts as one. Promotions are
// completed by the promoted node itself: it restarts as a manager and
// joins raft (see membership.Join).
func (m *Manager) runRoles(ctx context.Context) {
	sub := m.raft.Store().Subscribe()
	defer sub.Close()
	for {
		var demote []*api.Node
		members, _ := m.raft.Members()
		m.raft.Store().View(func(tx store.ReadTx) {
			for _, n := range tx.Nodes() {
				_, member := members[n.GetId()]
				if n.GetSpec().GetDesiredRole() == api.NodeRole_NODE_ROLE_WORKER &&
					(member || n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER || n.GetManagerStatus() != nil) {
					demote = append(demote, n)
				}
			}
		})
		var next time.Time
		for _, n := range demote {
			if err := m.demote(ctx, n); err != nil {
				if ctx.Err() != nil {
					return
				}
				m.logger.Warn("demote manager; retrying", "node", n.GetId(), "err", err)
				next = time.Now().Add(time.Second)
			}
		}
		if !wait(ctx, sub, next) {
			return
		}
		sub.Next()
	}
}

func (m *Manager) demote(ctx context.Context, n *api.Node) error {
	if n.GetId() == m.cfg.NodeID {
		// Another manager finishes the job once it leads.
		m.logger.Info("this manager is being demoted: handing over leadership")
		return m.raft.Raft().LeadershipTransfer().Error()
	}
	members, err := m.raft.Members()
	if err != nil {
		return err
	}
	if _, ok := members[n.GetId()]; ok {
		if err := m.raft.RemoveServer(n.GetId()); err != nil {
			return fmt.Errorf("remove %s from raft: %w", n.GetId(), err)
		}
	}
	if n.GetRole() == api.NodeRole_NODE_ROLE_WORKER && n.GetManagerStatus() == nil {
		return nil
	}
	upd := proto.Clone(n).(*api.Node)
	upd.Role = api.NodeRole_NODE_ROLE_WORKER
	upd.ManagerStatus = nil
	m.logger.Info("manager demoted", "node", n.GetId())
	return m.raft.Propose(ctx, store.Update(upd))
}
