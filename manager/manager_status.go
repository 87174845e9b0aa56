package manager

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

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
