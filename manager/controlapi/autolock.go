package controlapi

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// clusterUpdateAttempts bounds retries of a cluster update that raced
// another one.
const clusterUpdateAttempts = 5

// SetAutolock turns autolock on or off. Turning it on makes an unlock
// key; turning it on again returns the current one.
func (s *Server) SetAutolock(ctx context.Context, req *api.SetAutolockRequest) (*api.SetAutolockResponse, error) {
	c, err := s.updateCluster(ctx, func(c *api.Cluster) bool {
		if c.Spec == nil {
			c.Spec = &api.ClusterSpec{}
		}
		if c.GetSpec().GetAutolock() == req.GetAutolock() && (c.GetUnlockKey() != "") == req.GetAutolock() {
			return false
		}
		c.Spec.Autolock = req.GetAutolock()
		c.UnlockKey = ""
		if req.GetAutolock() {
			c.UnlockKey = state.NewUnlockKey()
		}
		return true
	})
	if err != nil {
		return nil, toStatus(fmt.Errorf("set autolock: %w", err))
	}
	return &api.SetAutolockResponse{UnlockKey: c.GetUnlockKey()}, nil
}

// GetUnlockKey returns the unlock key, rotating it first if asked.
func (s *Server) GetUnlockKey(ctx context.Context, req *api.GetUnlockKeyRequest) (*api.GetUnlockKeyResponse, error) {
	var c *api.Cluster
	s.view(func(tx store.ReadTx) { c = tx.Cluster() })
	if c == nil {
		return nil, status.Error(codes.FailedPrecondition, "the cluster is not initialised yet")
	}
	if !c.GetSpec().GetAutolock() {
		return nil, status.Error(codes.FailedPrecondition, "autolock is off, so there is no unlock key: turn it on with `shoalctl cluster update --autolock`")
	}
	if req.GetRotate() {
		var err error
		c, err = s.updateCluster(ctx, func(c *api.Cluster) bool {
			if !c.GetSpec().GetAutolock() {
				return false
			}
			c.UnlockKey = state.NewUnlockKey()
			return true
		})
		if err != nil {
			return nil, toStatus(fmt.Errorf("rotate the unlock key: %w", err))
		}
	}
	return &api.GetUnlockKeyResponse{UnlockKey: c.GetUnlockKey()}, nil
}

// updateCluster applies change to the cluster object, retrying when
// another update came in between; change reports whether it changed
// anything. It returns the cluster as it then is.
func (s *Server) updateCluster(ctx context.Context, change func(*api.Cluster) bool) (*api.Cluster, error) {
	for attempt := 1; ; attempt++ {
		var c *api.Cluster
		s.view(func(tx store.ReadTx) { c = tx.Cluster() })
		if c == nil {
			return nil, status.Error(codes.FailedPrecondition, "the cluster is not initialised yet")
		}
		upd := proto.Clone(c).(*api.Cluster)
		if !change(upd) {
			return c, nil
		}
		err := s.raft.Propose(ctx, store.Update(upd))
		if errors.Is(err, store.ErrSequenceConflict) && attempt < clusterUpdateAttempts {
			continue
		}
		if err != nil {
			return nil, err
		}
		return upd, nil
	}
}
