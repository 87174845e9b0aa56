package dispatcher

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// LeaveCluster removes the calling worker from the store (`shoald
// leave`). The node object goes as with `shoalctl node rm`: its tasks are
// replaced as those of a lost node, and the network views drop it. A
// manager must be demoted first, which checks the quorum. Any manager
// answers: a follower's proposal goes to the leader.
func (d *Dispatcher) LeaveCluster(ctx context.Context, req *api.LeaveClusterRequest) (*api.LeaveClusterResponse, error) {
	id := req.GetNodeId()
	if err := authorize(ctx, id); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		var (
			n       *api.Node
			cluster *api.Cluster
		)
		d.raft.Store().View(func(tx store.ReadTx) { n, cluster = tx.Node(id), tx.Cluster() })
		if n == nil {
			return nil, status.Errorf(codes.NotFound, "node %s is not part of this cluster", id)
		}
		name := n.GetDescription().GetHostname()
		if n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER || n.GetSpec().GetDesiredRole() == api.NodeRole_NODE_ROLE_MANAGER {
			return nil, status.Errorf(codes.FailedPrecondition, "node %s is a manager: demote it first (`shoalctl node demote %s` on a manager), then leave", name, name)
		}
		err := d.raft.Propose(ctx, store.RemoveNode(cluster, n, time.Now())...)
		if err == nil {
			d.logger.Info("node left the cluster", "node", id, "hostname", name)
			break
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "node %s is not part of this cluster", id)
		}
		// The node's status changed between the read and the write (its
		// last heartbeat, the down marker): read it again.
		if !errors.Is(err, store.ErrSequenceConflict) || attempt >= statusRetries {
			return nil, status.Errorf(codes.Unavailable, "remove node %s: %v", id, err)
		}
	}
	d.mu.Lock()
	if s := d.byNode[id]; s != nil {
		d.endLocked(s)
	}
	delete(d.opens, id)
	d.mu.Unlock()
	return &api.LeaveClusterResponse{}, nil
}
