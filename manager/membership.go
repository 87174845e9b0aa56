package manager

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// membership serves RaftMembership on every manager; only the leader can
// change the configuration or take proposals, so followers answer
// Unavailable with the leader's address for the caller to retry there.
type membership struct {
	api.UnimplementedRaftMembershipServer
	m *Manager
	// identify returns the calling node's id from its certificate.
	identify func(ctx context.Context) (string, error)
}

func (s *membership) notLeader() error {
	return status.Errorf(codes.Unavailable, "this manager is not the raft leader; the leader is at %q", s.m.raft.LeaderAddr())
}

func (s *membership) Join(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	id, err := s.identify(ctx)
	if err != nil {
		return nil, err
	}
	if !s.m.raft.IsLeader() {
		return nil, s.notLeader()
	}
	if req.GetAddr() == "" {
		return nil, status.Error(codes.InvalidArgument, "addr: missing advertise address")
	}
	var node *api.Node
	s.m.raft.Store().View(func(tx store.ReadTx) { node = tx.Node(id) })
	if node == nil {
		return nil, status.Errorf(codes.PermissionDenied, "node %s is not part of this cluster", id)
	}
	if node.GetSpec().GetDesiredRole() != api.NodeRole_NODE_ROLE_MANAGER {
		return nil, status.Errorf(codes.PermissionDenied, "node %s is not meant to be a manager", id)
	}
	if err := s.m.raft.AddVoter(id, req.GetAddr()); err != nil {
		return nil, status.Errorf(codes.Unavailable, "add raft voter %s at %s: %v", id, req.GetAddr(), err)
	}
	s.m.logger.Info("manager joined raft", "node", id, "addr", req.GetAddr())
	// Record the promotion; the node object changes often (sessions,
	// status), so re-read and retry on a lost race. The manager status
	// controller repairs it should this still fail.
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			s.m.raft.Store().View(func(tx store.ReadTx) { node = tx.Node(id) })
			if node == nil {
				break
			}
		}
		if node.GetRole() == api.NodeRole_NODE_ROLE_MANAGER && node.GetManagerStatus().GetRaftAddr() == req.GetAddr() {
			break
		}
		upd := proto.Clone(node).(*api.Node)
		upd.Role = api.NodeRole_NODE_ROLE_MANAGER
		upd.ManagerStatus = &api.ManagerStatus{RaftAddr: req.GetAddr(), Reachable: true}
		err := s.m.raft.Propose(ctx, store.Update(upd))
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrSequenceConflict) {
			s.m.logger.Warn("record promoted manager", "node", id, "err", err)
			break
		}
	}
	members, err := s.m.raft.Members()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &api.JoinResponse{}
	for _, addr := range members {
		resp.Members = append(resp.Members, addr)
	}
	sort.Strings(resp.Members)
	return resp, nil
}

func (s *membership) Leave(ctx context.Context, _ *api.LeaveRequest) (*api.LeaveResponse, error) {
	id, err := s.identify(ctx)
	if err != nil {
		return nil, err
	}
	if !s.m.raft.IsLeader() {
		return nil, s.notLeader()
	}
	if err := s.m.raft.RemoveServer(id); err != nil {
		return nil, status.Errorf(codes.Unavailable, "remove raft member %s: %v", id, err)
	}
	return &api.LeaveResponse{}, nil
}

// Propose applies a follower's command. The store's refusal is returned
// in the answer, typed, not as an RPC error: the RPC worked.
func (s *membership) Propose(ctx context.Context, req *api.ProposeRequest) (*api.ProposeResponse, error) {
	if !s.m.raft.IsLeader() {
		return nil, s.notLeader()
	}
	idx, err := s.m.raft.ProposeCommand(ctx, req.GetCommand())
	if err == nil {
		return &api.ProposeResponse{Index: idx}, nil
	}
	if idx == 0 {
		// Not applied at all: raft failed (leadership lost, timeout).
		return nil, status.Errorf(codes.Unavailable, "propose: %v", err)
	}
	kind := api.ProposeError_PROPOSE_ERROR_OTHER
	switch {
	case errors.Is(err, store.ErrNotFound):
		kind = api.ProposeError_PROPOSE_ERROR_NOT_FOUND
	case errors.Is(err, store.ErrExist):
		kind = api.ProposeError_PROPOSE_ERROR_EXISTS
	case errors.Is(err, store.ErrSequenceConflict):
		kind = api.ProposeError_PROPOSE_ERROR_SEQUENCE_CONFLICT
	case errors.Is(err, store.ErrInvalidAction):
		kind = api.ProposeError_PROPOSE_ERROR_INVALID
	}
	return &api.ProposeResponse{Index: idx, Error: kind, Message: err.Error()}, nil
}

// ReadIndex answers a follower's linearizable read (see state.Node.ReadIndex).
func (s *membership) ReadIndex(ctx context.Context, _ *api.ReadIndexRequest) (*api.ReadIndexResponse, error) {
	idx, err := s.m.raft.ReadIndex(ctx)
	if errors.Is(err, state.ErrNotLeader) {
		return nil, s.notLeader()
	}
	if err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return &api.ReadIndexResponse{Index: idx}, nil
}

// proposeError turns a forwarded refusal back into the store's error.
func proposeError(resp *api.ProposeResponse) error {
	var base error
	switch resp.GetError() {
	case api.ProposeError_PROPOSE_ERROR_UNSPECIFIED:
		return nil
	case api.ProposeError_PROPOSE_ERROR_NOT_FOUND:
		base = store.ErrNotFound
	case api.ProposeError_PROPOSE_ERROR_EXISTS:
		base = store.ErrExist
	case api.ProposeError_PROPOSE_ERROR_SEQUENCE_CONFLICT:
		base = store.ErrSequenceConflict
	case api.ProposeError_PROPOSE_ERROR_INVALID:
		base = store.ErrInvalidAction
	default:
		return errors.New(resp.GetMessage())
	}
	return &forwardedError{msg: resp.GetMessage(), base: base}
}

type forwardedError struct {
	msg  string
	base error
}

func (e *forwardedError) Error() string { return e.msg }
func (e *forwardedError) Unwrap() error { return e.base }

// forwarder sends a follower's proposals to the leader through cfg.Dial.
func (m *Manager) forwarder() state.Forwarder {
	return func(ctx context.Context, cmd *api.Command) (uint64, error) {
		conn, addr, err := m.dialLeader(ctx)
		if errors.Is(err, errNoLeader) {
			return 0, fmt.Errorf("%w: no leader elected", state.ErrNotLeader)
		}
		if err != nil {
			return 0, fmt.Errorf("reach leader at %s: %w", addr, err)
		}
		// Bounded whatever the caller's deadline, as a forwarded control
		// call is: a silent leader must not hold the proposal for minutes.
		pctx, cancel := context.WithTimeout(ctx, forwardTimeout)
		defer cancel()
		resp, err := api.NewRaftMembershipClient(conn).Propose(pctx, &api.ProposeRequest{Command: cmd})
		if err != nil {
			return 0, fmt.Errorf("%w: forward to leader at %s: %v", state.ErrNotLeader, addr, err)
		}
		return resp.GetIndex(), proposeError(resp)
	}
}
