package controlapi

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/store"
)

// GetJoinToken returns (and optionally rotates) a role's join token, to
// admins only (see redactCluster).
func (s *Server) GetJoinToken(ctx context.Context, req *api.GetJoinTokenRequest) (*api.GetJoinTokenResponse, error) {
	if !isAdmin(ctx) {
		return nil, status.Error(codes.PermissionDenied, "join tokens are given to admins only: run `shoalctl cluster join-token` on a manager or with an admin certificate")
	}
	role := req.GetRole()
	if role != api.NodeRole_NODE_ROLE_WORKER && role != api.NodeRole_NODE_ROLE_MANAGER {
		return nil, status.Error(codes.InvalidArgument, "role: want worker or manager")
	}
	if req.GetRotate() {
		if _, err := ca.RotateToken(ctx, s.raft, role); err != nil {
			return nil, toStatus(err)
		}
	}
	resp := &api.GetJoinTokenResponse{}
	var c *api.Cluster
	s.view(func(tx store.ReadTx) {
		c = tx.Cluster()
		resp.Managers = ca.ManagerAddrs(tx)
	})
	if c == nil {
		return nil, status.Error(codes.FailedPrecondition, "the cluster is not initialised yet")
	}
	if role == api.NodeRole_NODE_ROLE_MANAGER {
		resp.Token = c.GetJoinTokens().GetManager()
	} else {
		resp.Token = c.GetJoinTokens().GetWorker()
	}
	if resp.Token == "" {
		return nil, status.Error(codes.FailedPrecondition, "this cluster has no join tokens (it was made without a CA)")
	}
	return resp, nil
}

// managersReady counts the managers and those of them that are ready.
func managersReady(tx store.ReadTx) (managers, ready int) {
	for _, n := range tx.Nodes() {
		if n.GetRole() != api.NodeRole_NODE_ROLE_MANAGER {
			continue
		}
		managers++
		if n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY {
			ready++
		}
	}
	return managers, ready
}

// quorumAfterLosing refuses a change that would take a ready manager out
// of the raft group when the rest could no longer form a majority.
func quorumAfterLosing(tx store.ReadTx, n *api.Node) error {
	managers, ready := managersReady(tx)
	if n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY {
		ready--
	}
	managers--
	if managers == 0 {
		return status.Errorf(codes.FailedPrecondition, "node %s is the last manager: the cluster cannot lose it", n.GetDescription().GetHostname())
	}
	if ready < managers/2+1 {
		return status.Errorf(codes.FailedPrecondition, "taking manager %s away would leave %d of %d remaining managers reachable, short of a quorum of %d: bring the unreachable managers back first",
			n.GetDescription().GetHostname(), ready, managers, managers/2+1)
	}
	return nil
}

// UpdateNode changes a node's availability, labels or desired role.
func (s *Server) UpdateNode(ctx context.Context, req *api.UpdateNodeRequest) (*api.UpdateNodeResponse, error) {
	spec := req.GetSpec()
	if spec == nil {
		return nil, status.Error(codes.InvalidArgument, "spec: missing")
	}
	if _, ok := api.NodeAvailability_name[int32(spec.GetAvailability())]; !ok || spec.GetAvailability() == api.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED {
		return nil, status.Error(codes.InvalidArgument, "availability: want active, pause or drain")
	}
	if r := spec.GetDesiredRole(); r != api.NodeRole_NODE_ROLE_WORKER && r != api.NodeRole_NODE_ROLE_MANAGER {
		return nil, status.Error(codes.InvalidArgument, "desired_role: want worker or manager")
	}
	var (
		cur *api.Node
		err error
	)
	s.view(func(tx store.ReadTx) {
		cur, err = tx.LookupNode(req.GetNode())
		if err != nil {
			return
		}
		if cur.GetSpec().GetDesiredRole() == api.NodeRole_NODE_ROLE_MANAGER && spec.GetDesiredRole() == api.NodeRole_NODE_ROLE_WORKER {
			err = quorumAfterLosing(tx, cur)
		}
	})
	if err != nil {
		return nil, toStatus(err)
	}
	if v := req.GetVersion(); v != 0 && v != cur.GetMeta().GetVersion() {
		return nil, status.Errorf(codes.Aborted, "node %s changed since it was read: read it again and retry", req.GetNode())
	}
	upd := proto.Clone(cur).(*api.Node)
	upd.Spec = proto.Clone(spec).(*api.NodeSpec)
	upd.Meta.UpdatedAt = timestamppb.New(s.now())
	if err := s.raft.Propose(ctx, store.Update(upd)); err != nil {
		return nil, toStatus(err)
	}
	s.view(func(tx store.ReadTx) { upd = tx.Node(upd.GetId()) })
	return &api.UpdateNodeResponse{Node: upd}, nil
}

// RemoveNode removes a node from the cluster; its certificate stops
// working at once (the authorizer finds no such node).
// removeRetries bounds the re-reads of a node removal that lost a race
// with another write to the node or the cluster object.
const removeRetries = 5

func (s *Server) RemoveNode(ctx context.Context, req *api.RemoveNodeRequest) (*api.RemoveNodeResponse, error) {
	var (
		n   *api.Node
		err error
	)
	s.view(func(tx store.ReadTx) { n, err = tx.LookupNode(req.GetNode()) })
	if err != nil {
		return nil, toStatus(err)
	}
	name := n.GetDescription().GetHostname()
	if n.GetId() == s.selfID {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is the node answering this call: remove it from another manager", name)
	}
	if n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER || n.GetSpec().GetDesiredRole() == api.NodeRole_NODE_ROLE_MANAGER {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is a manager: demote it first (`shoalctl node demote %s`)", name, name)
	}
	if n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY && !req.GetForce() {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is up: drain it and stop its shoald first, or remove it anyway with --force", name)
	}
	// The node is recorded as removed in the cluster object in the same
	// command, so that its certificate is refused on raft from then on.
	for attempt := 0; ; attempt++ {
		var cluster *api.Cluster
		s.view(func(tx store.ReadTx) { cluster = tx.Cluster() })
		err := s.raft.Propose(ctx, store.RemoveNode(cluster, n, time.Now())...)
		if err == nil {
			return &api.RemoveNodeResponse{}, nil
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "node %s: already removed", name)
		}
		if !errors.Is(err, store.ErrSequenceConflict) || attempt >= removeRetries {
			return nil, toStatus(err)
		}
		// The node or the cluster changed under us (a heartbeat, another
		// removal): read both again.
		var again *api.Node
		s.view(func(tx store.ReadTx) { again = tx.Node(n.GetId()) })
		if again == nil {
			return nil, status.Errorf(codes.NotFound, "node %s: already removed", name)
		}
		n = again
	}
}
