package manager

import (
	"context"

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
	addr := c.m.raft.LeaderAddr()
	if addr == "" {
		return nil, status.Error(codes.Unavailable, "no raft leader elected: try again shortly")
	}
	conn, err := c.m.cfg.Dial(ctx, addr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reach the leader at %s: %v", addr, err)
	}
	return api.NewControlClient(conn), nil
}

// settled waits until this manager's store holds the leader's answer, so
// that a read here right after the call sees what it made.
func (c controlServer) settled(ctx context.Context, meta *api.Meta) error {
	if err := c.m.raft.WaitApplied(ctx, meta.GetVersion()); err != nil {
		return status.FromContextError(err).Err()
	}
	return nil
}

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
	resp, err := remote(l, ctx, req)
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
