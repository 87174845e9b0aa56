package manager

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/orchestrator"
	"github.com/shoal-project/shoal/manager/store"
)

// orchestratorController keeps every service's tasks matching its spec: it
// reconciles (orchestrator.Reconcile) each service that a change touched,
// and again when a plan asks to be woken (restart delays, a rolling
// update's delays and monitor periods). A plan's change of the service
// (the rollout's progress) goes first, in the same command as the tasks
// unless the plan is bigger than a command.
type orchestratorController struct {
	m     *Manager
	log   *slog.Logger
	dirty map[string]bool      // services to reconcile, by id
	wakes map[string]time.Time // services to reconcile at a time, by id
}

func newOrchestratorController(m *Manager) *orchestratorController {
	return &orchestratorController{m: m, log: m.logger.With("component", "orchestrator"),
		dirty: map[string]bool{}, wakes: map[string]time.Time{}}
}

func (c *orchestratorController) pass(ctx context.Context) time.Time {
	now := time.Now()
	for id, at := range c.wakes {
		if !at.After(now) {
			c.dirty[id] = true
			delete(c.wakes, id)
		}
	}
	for id := range c.dirty {
		var (
			svc   *api.Service
			tasks []*api.Task
			nodes = map[string]*api.Node{}
			cfg   = c.m.cfg.Orchestrator
		)
		c.m.raft.Store().View(func(tx store.ReadTx) {
			svc = tx.Service(id)
			tasks = tx.TasksOfService(id)
			for _, n := range tx.Nodes() {
				nodes[n.GetId()] = n
			}
			if cfg.TaskHistoryLimit == 0 {
				cfg.TaskHistoryLimit = int(tx.Cluster().GetSpec().GetOrchestration().GetTaskHistoryLimit())
			}
		})
		delete(c.dirty, id)
		if svc == nil && len(tasks) == 0 {
			continue
		}
		plan := orchestrator.Reconcile(now, cfg, svc, tasks, nodes)
		if !plan.Wake.IsZero() {
			c.wakes[id] = plan.Wake
		}
		if plan.Empty() {
			continue
		}
		actions := make([]*api.StoreAction, 0, 1+len(plan.Create)+len(plan.Update)+len(plan.Remove))
		ts := timestamppb.New(now)
		if plan.Service != nil {
			plan.Service.Meta.UpdatedAt = ts
			actions = append(actions, store.Update(plan.Service))
		}
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
		if err := c.m.raft.ProposeBatches(ctx, actions); err != nil {
			if ctx.Err() != nil {
				return time.Time{}
			}
			if errors.Is(err, store.ErrSequenceConflict) {
				// The service or a task changed since it was read (an
				// update, a status report): its change event brings it
				// back.
				c.log.Debug("reconcile plan raced a change; planning again", "service", id, "err", err)
			} else {
				c.log.Warn("apply reconcile plan; retrying", "service", id, "err", err)
			}
			c.wakes[id] = time.Now().Add(retryDelay)
			continue
		}
		if st := plan.Service.GetUpdateStatus(); plan.Service != nil && st.GetState() != svc.GetUpdateStatus().GetState() {
			c.log.Info("rollout "+api.UpdateStateName(st.GetState()), "service", plan.Service.GetSpec().GetName(),
				"spec_version", st.GetSpecVersion(), "message", st.GetMessage())
		}
	}
	return earliest(c.wakes)
}

// changed marks the services the changes touch. It always asks for a
// pass: one with nothing marked costs nothing.
func (c *orchestratorController) changed(changes []store.Change) bool {
	eachEvent(changes, c.markAll, func(ev store.Event) {
		switch o := ev.Object.(type) {
		case *api.Service:
			c.dirty[o.GetId()] = true
		case *api.Task:
			c.dirty[o.GetServiceId()] = true
		case *api.Node:
			old, _ := ev.Old.(*api.Node)
			if ev.Kind == api.StoreActionKind_STORE_ACTION_KIND_REMOVE ||
				old.GetStatus().GetState() != o.GetStatus().GetState() ||
				old.GetSpec().GetAvailability() != o.GetSpec().GetAvailability() {
				c.m.raft.Store().View(func(tx store.ReadTx) {
					for _, t := range tx.TasksOfNode(o.GetId()) {
						c.dirty[t.GetServiceId()] = true
					}
				})
			}
			if eligibilityMayDiffer(ev.Kind, old, o) {
				c.markGlobal()
			}
		}
	})
	return true
}

// markAll marks every service, and every service that still has tasks.
func (c *orchestratorController) markAll() {
	c.m.raft.Store().View(func(tx store.ReadTx) {
		for _, s := range tx.Services() {
			c.dirty[s.GetId()] = true
		}
		for _, t := range tx.Tasks() {
			c.dirty[t.GetServiceId()] = true
		}
	})
}

// markGlobal marks every global service and global job: a node came,
// went, or changed in a way that may change where they run.
func (c *orchestratorController) markGlobal() {
	c.m.raft.Store().View(func(tx store.ReadTx) {
		for _, s := range tx.Services() {
			if api.IsGlobal(s.GetSpec()) {
				c.dirty[s.GetId()] = true
			}
		}
	})
}

// eligibilityMayDiffer reports whether a node event may change which
// nodes a global service runs on: a node joined or left, or changed what
// eligibility reads (state, availability, labels, role, hostname,
// platform). Heartbeats and certificate renewals do not.
func eligibilityMayDiffer(kind api.StoreActionKind, old, n *api.Node) bool {
	return kind != api.StoreActionKind_STORE_ACTION_KIND_UPDATE ||
		old.GetStatus().GetState() != n.GetStatus().GetState() ||
		old.GetRole() != n.GetRole() ||
		!proto.Equal(old.GetSpec(), n.GetSpec()) ||
		!proto.Equal(old.GetDescription(), n.GetDescription())
}
