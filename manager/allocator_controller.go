package manager

import (
	"context"
	"log/slog"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator/stored"
	"github.com/shoal-project/shoal/manager/store"
)

// allocRetry is how long a task whose network allocation failed (an
// exhausted subnet, a service not allocated) waits before the next try,
// unless something that may free addresses happens first. Each try
// rebuilds the allocator from the store, so not much more often than this.
const allocRetry = time.Second

// allocatorController moves NEW tasks to PENDING once their restart delay
// has passed, with an address and MAC on every network of their service's
// endpoint (ingress included) stored on the task in the same update. A
// task that cannot be allocated stays NEW, says why in its status, and is
// tried again. It also gives every node its address on the ingress
// network. The decisions and their commits are the network allocator's
// (stored.Allocator.AllocateTasks); this controller only picks what is
// due and when to retry.
//
// Nothing is kept up to date from events but what to look at: the store
// is the only truth, a new leader needs nothing else, and freeing is
// implicit (removed tasks and nodes, and terminal tasks, hold nothing;
// see stored.Allocation).
type allocatorController struct {
	m          *Manager
	log        *slog.Logger
	candidates map[string]bool // NEW tasks, by id
	// failed holds tasks whose last allocation failed: they are tried
	// again at retryAt, or as soon as addresses may have been freed.
	failed     map[string]bool
	retryAt    time.Time
	nodesDirty bool   // some node may lack its ingress address
	lastErr    string // the last clash among stored allocations, logged once
}

func newAllocatorController(m *Manager) *allocatorController {
	return &allocatorController{m: m, log: m.logger.With("component", "allocator"),
		candidates: map[string]bool{}, failed: map[string]bool{}}
}

func (c *allocatorController) pass(ctx context.Context) time.Time {
	now := time.Now()
	var (
		due  []string
		next time.Time
	)
	if !c.retryAt.IsZero() && !now.Before(c.retryAt) {
		clear(c.failed)
		c.retryAt = time.Time{}
	}
	c.m.raft.Store().View(func(tx store.ReadTx) {
		for id := range c.candidates {
			t := tx.Task(id)
			if t == nil || !stored.Waiting(t) {
				delete(c.candidates, id)
				delete(c.failed, id)
				continue
			}
			if nb := t.GetNotBefore(); nb != nil && nb.AsTime().After(now) {
				if next.IsZero() || nb.AsTime().Before(next) {
					next = nb.AsTime()
				}
				continue
			}
			if !c.failed[id] {
				due = append(due, id)
			}
		}
	})
	if len(due) > 0 || c.nodesDirty {
		res, err := c.m.networks.AllocateTasks(ctx, due, c.nodesDirty)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return time.Time{}
			}
			c.log.Warn("allocate networks; retrying", "err", err)
			c.scanAll()
			next = time.Now().Add(retryDelay)
		default:
			for _, id := range due {
				if !res.Failed[id] {
					delete(c.candidates, id)
				}
			}
			for id := range res.Failed {
				c.failed[id] = true
			}
			c.nodesDirty = res.NodesFailed
			if len(c.failed) > 0 || c.nodesDirty {
				c.retryAt = time.Now().Add(allocRetry)
			}
		}
		if res.RestoreErr != "" && res.RestoreErr != c.lastErr {
			c.log.Warn("stored network allocations clash; the objects named were skipped", "err", res.RestoreErr)
		}
		c.lastErr = res.RestoreErr
	}
	if !c.retryAt.IsZero() && (next.IsZero() || c.retryAt.Before(next)) {
		next = c.retryAt
	}
	return next
}

// changed notes new NEW tasks, nodes that may lack an address, and
// changes that may free addresses for tasks that failed. It always asks
// for a pass: one with nothing due costs one store read.
func (c *allocatorController) changed(changes []store.Change) bool {
	eachEvent(changes, c.scanAll, func(ev store.Event) {
		removed := ev.Kind == api.StoreActionKind_STORE_ACTION_KIND_REMOVE
		switch o := ev.Object.(type) {
		case *api.Task:
			if !removed && o.GetStatus().GetState() == api.TaskState_TASK_STATE_NEW {
				c.candidates[o.GetId()] = true
			}
			if len(o.GetNetworks()) > 0 && (removed || api.IsTerminal(o.GetStatus().GetState())) {
				clear(c.failed) // addresses were freed
			}
		case *api.Service:
			clear(c.failed) // a service allocated, changed or gone
		case *api.Network:
			clear(c.failed)
			c.nodesDirty = true // the ingress network may be new
		case *api.Node:
			if removed {
				clear(c.failed)
			} else if o.GetIngress() == nil {
				c.nodesDirty = true
			}
		}
	})
	return true
}

// scanAll makes every NEW task a candidate and every node worth a look,
// and forgets past failures.
func (c *allocatorController) scanAll() {
	c.m.raft.Store().View(func(tx store.ReadTx) {
		for _, t := range tx.Tasks() {
			if t.GetStatus().GetState() == api.TaskState_TASK_STATE_NEW {
				c.candidates[t.GetId()] = true
			}
		}
	})
	c.nodesDirty = true
	clear(c.failed)
}
