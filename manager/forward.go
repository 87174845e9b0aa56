package manager

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/controlapi"
)

// controlServer is the control API as registered: the local one, except
// that, while this manager follows, the control calls that allocate
// addresses and ports (and network removal, which must see every
// allocation) go to the leader through Config.Dial. The leader's network
// allocator (stored.Allocator, shared by its allocator controller and its
// control API) decides under one lock from one store; a
// follower allocating from its own copy could hand out an address the
// leader just gave a task, since the store's version checks guard single
// objects, not addresses across them. Without a dialer the follower
// allocates itself (tests, single managers).
type controlServer struct {
	*controlapi.Server
	m *Manager
}

// leader returns a client of the leader's control API, or nil when this
// manager should answer itself.
func (c controlServer) leader(ctx context.Context) (api.ControlClient, error) {
	if c.m.raft.IsLeader() {
		return nil, nil
	}
	if c.m.cfg.Dial == nil {
		return nil, nil
	}
	conn, addr, err := c.m.dialLeader(ctx)
	switch {
	case errors.Is(err, errNoLeader):
		return nil, status.Error(codes.Unavailable, "no raft leader elected: try again shortly")
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "reach the leader at %s: %v", addr, err)
	}
	return api.NewControlClient(conn), nil
}

// errNoLeader: this manager knows of no raft leader (an election is on).
var errNoLeader = errors.New("no raft leader elected")

// dialLeader connects to the raft leader's cluster port through
// Config.Dial; addr is the leader's address (empty with errNoLeader).
func (m *Manager) dialLeader(ctx context.Context) (_ grpc.ClientConnInterface, addr string, _ error) {
	addr = m.raft.LeaderAddr()
	if addr == "" {
		return nil, "", errNoLeader
	}
	conn, err := m.cfg.Dial(ctx, addr)
	return conn, addr, err
}

// settled waits until this manager's store holds the leader's answer, so
// that a read here right after the call sees what it made.
func (c controlServer) settled(ctx context.Context, meta *api.Meta) error {
	if err := c.m.raft.WaitApplied(ctx, meta.GetVersion()); err != nil {
		return status.FromContextError(err).Err()
	}
	return nil
}

// forwardTimeout bounds a control call forwarded to the leader, whatever
// the caller's deadline: the leader answers once its write is committed
// (raft gives up on a write after 10 s), so past this the leader is lost
// (stopped, or cut off) and the caller had better hear it than hang.
const forwardTimeout = 30 * time.Second

// forward answers req locally, or has the leader answer it and waits for
// the answer to reach this manager's store.
func forward[Req, Resp any](ctx context.Context, c controlServer, req Req,
	local func(context.Context, Req) (Resp, error),
	remote func(api.ControlClient, context.Context, Req) (Resp, error),
	meta func(Resp) *api.Meta,
) (Resp, error) {
	var zero Resp
	l, err := c.leader(ctx)
	if err != nil {
		return zero, err
	}
	if l == nil {
		return local(ctx, req)
	}
	c.m.logger.Debug("control call made by the leader", "leader", c.m.raft.LeaderAddr())
	rctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	resp, err := remote(l, rctx, req)
	if err != nil {
		return zero, err
	}
	return resp, c.settled(ctx, meta(resp))
}

func (c controlServer) CreateService(ctx context.Context, req *api.CreateServiceRequest) (*api.CreateServiceResponse, error) {
	return forward(ctx, c, req, c.Server.CreateService,
		func(l api.ControlClient, ctx context.Context, req *api.CreateServiceRequest) (*api.CreateServiceResponse, error) {
			return l.CreateService(ctx, req)
		},
		func(r *api.CreateServiceResponse) *api.Meta { return r.GetService().GetMeta() })
}

func (c controlServer) UpdateService(ctx context.Context, req *api.UpdateServiceRequest) (*api.UpdateServiceResponse, error) {
	return forward(ctx, c, req, c.Server.UpdateService,
		func(l api.ControlClient, ctx context.Context, req *api.UpdateServiceRequest) (*api.UpdateServiceResponse, error) {
			return l.UpdateService(ctx, req)
		},
		func(r *api.UpdateServiceResponse) *api.Meta { return r.GetService().GetMeta() })
}

func (c controlServer) RollbackService(ctx context.Context, req *api.RollbackServiceRequest) (*api.RollbackServiceResponse, error) {
	return forward(ctx, c, req, c.Server.RollbackService,
		func(l api.ControlClient, ctx context.Context, req *api.RollbackServiceRequest) (*api.RollbackServiceResponse, error) {
			return l.RollbackService(ctx, req)
		},
		func(r *api.RollbackServiceResponse) *api.Meta { return r.GetService().GetMeta() })
}

func (c controlServer) CreateNetwork(ctx context.Context, req *api.CreateNetworkRequest) (*api.CreateNetworkResponse, error) {
	return forward(ctx, c, req, c.Server.CreateNetwork,
		func(l api.ControlClient, ctx context.Context, req *api.CreateNetworkRequest) (*api.CreateNetworkResponse, error) {
			return l.CreateNetwork(ctx, req)
		},
		func(r *api.CreateNetworkResponse) *api.Meta { return r.GetNetwork().GetMeta() })
}

// RemoveNetwork goes to the leader too: its check that no service uses the
// network must see the services the leader is making.
func (c controlServer) RemoveNetwork(ctx context.Context, req *api.RemoveNetworkRequest) (*api.RemoveNetworkResponse, error) {
	return forward(ctx, c, req, c.Server.RemoveNetwork,
		func(l api.ControlClient, ctx context.Context, req *api.RemoveNetworkRequest) (*api.RemoveNetworkResponse, error) {
			return l.RemoveNetwork(ctx, req)
		},
		// The answer names no version to wait for.
		func(*api.RemoveNetworkResponse) *api.Meta { return nil })
}

// linearize makes the read (or the lookup of a write made here) that
// follows see every write completed before it began, on any manager: it
// gets a read index from the leader (itself when leading) and waits until
// this manager's store has applied it. Without it a follower answers from
// a store that may lag by a few entries, a leader cut off from the others
// from one frozen at the partition, and a restarted manager from one not
// caught up yet (all three found by TestLinearizableUnderFaults). Swarm
// gets the same by sending every control call to the leader; a read index
// keeps the read and its answer local. Without a dialer (tests, single
// managers) a follower reads its own store.
func (c controlServer) linearize(ctx context.Context) error {
	idx, err := c.readIndex(ctx)
	if err != nil {
		return err
	}
	if err := c.m.raft.WaitApplied(ctx, idx); err != nil {
		return status.FromContextError(err).Err()
	}
	return nil
}

// readIndex is the store index a read here must wait for: this member's
// own when it is the only voter, else the leader's (itself when leading);
// 0 for a follower without a dialer (tests), which reads its own store.
// The errors say what happened without the transport's own words
// ("connection refused"...): a client would take those for this manager
// being unreachable, not its leader.
func (c controlServer) readIndex(ctx context.Context) (uint64, error) {
	if idx, ok := c.m.raft.SoleVoterReadIndex(); ok {
		return idx, nil
	}
	if c.m.raft.IsLeader() {
		idx, err := c.m.raft.ReadIndex(ctx)
		if err != nil {
			c.m.logger.Debug("read index", "err", err)
			return 0, status.Error(codes.Unavailable, "this manager could not confirm it still leads (no quorum answered): try again shortly")
		}
		return idx, nil
	}
	if c.m.cfg.Dial == nil {
		return 0, nil
	}
	rctx, cancel := context.WithTimeout(ctx, readIndexTimeout)
	defer cancel()
	conn, addr, err := c.m.dialLeader(rctx)
	if errors.Is(err, errNoLeader) {
		return 0, status.Error(codes.Unavailable, "no raft leader elected: try again shortly")
	}
	var resp *api.ReadIndexResponse
	if err == nil {
		resp, err = api.NewRaftMembershipClient(conn).ReadIndex(rctx, &api.ReadIndexRequest{})
	}
	if err != nil {
		c.m.logger.Debug("read index from the leader", "leader", addr, "err", err)
		return 0, status.Errorf(codes.Unavailable, "the raft leader (%s) did not answer for a consistent read: try again shortly", addr)
	}
	return resp.GetIndex(), nil
}

// readIndexTimeout bounds asking the leader for a read index: it answers
// within a heartbeat round unless it is lost, and a read had better fail
// fast then (the client tries another manager, or again).
const readIndexTimeout = 5 * time.Second

// read is a control call answered from this manager's store once it is
// linearized.
func read[Req, Resp any](ctx context.Context, c controlServer, req Req, local func(context.Context, Req) (Resp, error)) (Resp, error) {
	if err := c.linearize(ctx); err != nil {
		var zero Resp
		return zero, err
	}
	return local(ctx, req)
}

func (c controlServer) GetCluster(ctx context.Context, req *api.GetClusterRequest) (*api.GetClusterResponse, error) {
	return read(ctx, c, req, c.Server.GetCluster)
}

func (c controlServer) ListNodes(ctx context.Context, req *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	return read(ctx, c, req, c.Server.ListNodes)
}

func (c controlServer) GetNode(ctx context.Context, req *api.GetNodeRequest) (*api.GetNodeResponse, error) {
	return read(ctx, c, req, c.Server.GetNode)
}

func (c controlServer) UpdateNode(ctx context.Context, req *api.UpdateNodeRequest) (*api.UpdateNodeResponse, error) {
	return read(ctx, c, req, c.Server.UpdateNode)
}

func (c controlServer) RemoveNode(ctx context.Context, req *api.RemoveNodeRequest) (*api.RemoveNodeResponse, error) {
	return read(ctx, c, req, c.Server.RemoveNode)
}

func (c controlServer) GetService(ctx context.Context, req *api.GetServiceRequest) (*api.GetServiceResponse, error) {
	return read(ctx, c, req, c.Server.GetService)
}

func (c controlServer) ListServices(ctx context.Context, req *api.ListServicesRequest) (*api.ListServicesResponse, error) {
	return read(ctx, c, req, c.Server.ListServices)
}

func (c controlServer) RemoveService(ctx context.Context, req *api.RemoveServiceRequest) (*api.RemoveServiceResponse, error) {
	return read(ctx, c, req, c.Server.RemoveService)
}

func (c controlServer) ListTasks(ctx context.Context, req *api.ListTasksRequest) (*api.ListTasksResponse, error) {
	return read(ctx, c, req, c.Server.ListTasks)
}

func (c controlServer) GetNetwork(ctx context.Context, req *api.GetNetworkRequest) (*api.GetNetworkResponse, error) {
	return read(ctx, c, req, c.Server.GetNetwork)
}

func (c controlServer) ListNetworks(ctx context.Context, req *api.ListNetworksRequest) (*api.ListNetworksResponse, error) {
	return read(ctx, c, req, c.Server.ListNetworks)
}
