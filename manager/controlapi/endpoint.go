package controlapi

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/allocator/stored"
	"github.com/shoal-project/shoal/manager/store"
)

// allocateEndpoint fills svc.Endpoint from its spec: published ports (a
// port another service holds is refused naming it; 0 picks one) and a VIP
// per network. The allocator is rebuilt from the store each time (tasks'
// and nodes' addresses included, so a VIP never takes one of theirs),
// under the lock the leader's allocator controller also takes, so
// decisions never race each other on this manager. The caller holds
// s.networks.mu until it has proposed.
func (s *Server) allocateEndpoint(svc *api.Service) error {
	spec := svc.GetSpec()
	ports, err := stored.Ports(spec.GetEndpoint().GetPorts())
	if err != nil {
		return allocStatus(err)
	}
	if len(ports) == 0 && len(spec.GetNetworks()) == 0 {
		svc.Endpoint = nil
		return nil
	}
	var (
		st    allocator.Allocation
		stErr error
	)
	// The service's own allocation (on an update) is restored too, so the
	// allocator treats the call as an update and keeps picked ports.
	s.view(func(tx store.ReadTx) { st, stErr = stored.Allocation(tx) })
	if stErr != nil {
		return status.Errorf(codes.Internal, "load the network allocations: %v", stErr)
	}
	alloc, err := allocator.New(s.networks.cfg)
	if err != nil {
		return status.Errorf(codes.Internal, "network allocator: %v", err)
	}
	if err := alloc.Restore(st); err != nil {
		return status.Errorf(codes.Internal, "load the network allocations: %v", err)
	}
	got, err := alloc.AllocateService(allocator.ServiceNeeds{
		ID: svc.GetId(), Name: spec.GetName(), Networks: spec.GetNetworks(), Ports: ports, EndpointMode: spec.GetEndpoint().GetMode(),
	})
	if err != nil {
		return allocStatus(err)
	}
	svc.Endpoint = stored.Endpoint(got)
	return nil
}
