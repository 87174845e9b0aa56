package controlapi

import (
	"fmt"
	"net/netip"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/store"
)

func toAllocPorts(ports []*api.PortConfig) ([]allocator.PortConfig, error) {
	out := make([]allocator.PortConfig, 0, len(ports))
	for i, p := range ports {
		if p.GetTarget() == 0 || p.GetTarget() > 65535 || p.GetPublished() > 65535 {
			return nil, status.Errorf(codes.InvalidArgument, "endpoint.ports[%d]: ports are 1-65535 (target %d, published %d)", i, p.GetTarget(), p.GetPublished())
		}
		out = append(out, allocator.PortConfig{Protocol: p.GetProtocol(), Target: uint16(p.GetTarget()), Published: uint16(p.GetPublished()), Mode: p.GetMode()})
	}
	return out, nil
}

func fromAllocPorts(ports []allocator.PortConfig) []*api.PortConfig {
	out := make([]*api.PortConfig, 0, len(ports))
	for _, p := range ports {
		out = append(out, &api.PortConfig{Protocol: p.Protocol, Target: uint32(p.Target), Published: uint32(p.Published), Mode: p.Mode})
	}
	return out
}

// storedAllocation is what the store holds of network allocations, in the
// allocator's terms: networks, and services' endpoints.
func storedAllocation(tx store.ReadTx) (allocator.Allocation, error) {
	var st allocator.Allocation
	for _, n := range tx.Networks() {
		an, err := toAllocNetwork(n)
		if err != nil {
			return st, err
		}
		st.Networks = append(st.Networks, an)
	}
	for _, svc := range tx.Services() {
		ep := svc.GetEndpoint()
		if ep == nil {
			continue
		}
		sa := allocator.ServiceAllocation{ServiceID: svc.GetId(), Name: svc.GetSpec().GetName(),
			EndpointMode: svc.GetSpec().GetEndpoint().GetMode(), Networks: ep.GetNetworks()}
		ports, err := toAllocPorts(ep.GetPorts())
		if err != nil {
			return st, err
		}
		sa.Ports = ports
		for _, v := range ep.GetVips() {
			addr, err := netip.ParsePrefix(v.GetAddr())
			if err != nil {
				return st, fmt.Errorf("service %s: VIP %q: %w", svc.GetSpec().GetName(), v.GetAddr(), err)
			}
			sa.VIPs = append(sa.VIPs, allocator.VIP{NetworkID: v.GetNetworkId(), Addr: addr})
		}
		st.Services = append(st.Services, sa)
	}
	return st, nil
}

// allocateEndpoint fills svc.Endpoint from its spec: published ports (a
// port another service holds is refused naming it; 0 picks one) and a VIP
// per network. The allocator is rebuilt from the store each time, under
// the same lock as network creation, so decisions never race each other
// on this manager. The caller holds s.networks.mu until it has proposed.
func (s *Server) allocateEndpoint(svc *api.Service) error {
	spec := svc.GetSpec()
	ports, err := toAllocPorts(spec.GetEndpoint().GetPorts())
	if err != nil {
		return err
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
	s.view(func(tx store.ReadTx) { st, stErr = storedAllocation(tx) })
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
	ep := &api.Endpoint{Ports: fromAllocPorts(got.Ports), Networks: got.Networks}
	for _, v := range got.VIPs {
		ep.Vips = append(ep.Vips, &api.EndpointVIP{NetworkId: v.NetworkID, Addr: v.Addr.String()})
	}
	svc.Endpoint = ep
	return nil
}
