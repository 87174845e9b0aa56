package manager

import (
	"context"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/store"
)

// caRotationController ends a root CA rotation once every node holds a
// certificate of the new root (ca.FinishRotation): the last renewal, or
// the removal of the last node that had not renewed, is what lets it.
type caRotationController struct {
	m *Manager
}

func (c caRotationController) pass(ctx context.Context) time.Time {
	done, err := ca.FinishRotation(ctx, c.m.raft)
	if err != nil {
		if ctx.Err() == nil {
			c.m.logger.Warn("finish CA rotation; retrying", "err", err)
		}
		return time.Now().Add(retryDelay)
	}
	if done {
		c.m.logger.Info("CA rotation done: the old root is retired")
	}
	return time.Time{}
}

// changed asks for a pass on any change to the cluster object or a node.
func (caRotationController) changed(changes []store.Change) bool {
	return store.Affects(changes, func(ev store.Event) bool {
		switch ev.Object.(type) {
		case *api.Cluster, *api.Node:
			return true
		}
		return false
	})
}
