package manager

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// demoteRetry is how long a failed demotion (a configuration change raft
// refused, a leadership transfer that did not happen) waits before the
// next try, unless the store changes first.
const demoteRetry = time.Second

// roleController carries out demotions: a manager whose desired role is
// worker leaves the raft group (the leader hands over leadership first
// when it is the one demoted) and becomes a worker in the store. Its node
// then renews its certificate as a worker and restarts as one. Promotions
// are completed by the promoted node itself: it restarts as a manager and
// joins raft (see membership.Join).
type roleController struct {
	m *Manager
}

func (c roleController) pass(ctx context.Context) time.Time {
	m := c.m
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
		if err := c.demote(ctx, n); err != nil {
			if ctx.Err() != nil {
				return time.Time{}
			}
			m.logger.Warn("demote manager; retrying", "node", n.GetId(), "err", err)
			next = time.Now().Add(demoteRetry)
		}
	}
	return next
}

// changed always asks for a pass: raft membership, which a pass also
// reads, changes outside the store.
func (roleController) changed([]store.Change) bool { return true }

func (c roleController) demote(ctx context.Context, n *api.Node) error {
	m := c.m
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
