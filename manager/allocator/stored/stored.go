// Package stored owns network allocation for a manager: its Allocator is
// the only code that decides networks, VIPs, published ports, task
// addresses and node ingress addresses. Each decision is one cycle under
// one lock: read the store, restore the pure allocator (package allocator)
// from it with Allocation, allocate, and propose the result through raft.
// The control API (networks, services' endpoints), the leader's allocator
// controller (tasks NEW → PENDING, nodes' ingress addresses) and
// manager.Init (the ingress network) all call it; none of them builds an
// allocator or takes a lock of its own. The functions here also convert
// between stored messages and the allocator's types.
package stored

import (
	"fmt"
	"net"
	"net/netip"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/store"
)

// Allocation is everything the store holds allocated: networks, services'
// endpoints, the addresses of tasks that may still have an interface, and
// nodes' ingress addresses.
//
// A task in a terminal state (complete, shutdown, failed, rejected,
// orphaned) keeps its addresses in the store, for `service ps` and
// inspect, but does not hold them here: its container is gone, and a task
// failing in a loop would otherwise exhaust its subnets with the history
// it leaves behind.
func Allocation(tx store.ReadTx) (allocator.Allocation, error) {
	var st allocator.Allocation
	for _, n := range tx.Networks() {
		an, err := Network(n)
		if err != nil {
			return st, err
		}
		st.Networks = append(st.Networks, an)
	}
	for _, svc := range tx.Services() {
		sa, ok, err := Service(svc)
		if err != nil {
			return st, err
		}
		if ok {
			st.Services = append(st.Services, sa)
		}
	}
	for _, t := range tx.Tasks() {
		if len(t.GetNetworks()) == 0 || api.IsTerminal(t.GetStatus().GetState()) {
			continue
		}
		ta := allocator.TaskAllocation{TaskID: t.GetId(), ServiceID: t.GetServiceId(), NodeID: t.GetNodeId()}
		for _, at := range t.GetNetworks() {
			a, err := Attachment(at)
			if err != nil {
				return st, fmt.Errorf("stored task %s: %w", t.GetId(), err)
			}
			ta.Attachments = append(ta.Attachments, a)
		}
		st.Tasks = append(st.Tasks, ta)
	}
	for _, n := range tx.Nodes() {
		if n.GetIngress() == nil {
			continue
		}
		a, err := Attachment(n.GetIngress())
		if err != nil {
			return st, fmt.Errorf("stored node %s: ingress: %w", n.GetId(), err)
		}
		st.Nodes = append(st.Nodes, allocator.NodeAllocation{NodeID: n.GetId(), Ingress: a})
	}
	return st, nil
}

// Network converts a stored network to the allocator's form.
func Network(n *api.Network) (allocator.Network, error) {
	out := allocator.Network{ID: n.GetId(), Name: n.GetSpec().GetName(), VNI: n.GetVni(), Ingress: n.GetIngress()}
	var err error
	if out.Subnet, err = netip.ParsePrefix(n.GetSubnet()); err != nil {
		return allocator.Network{}, fmt.Errorf("stored network %s: subnet: %w", out.Name, err)
	}
	if n.GetGateway() != "" {
		if out.Gateway, err = netip.ParseAddr(n.GetGateway()); err != nil {
			return allocator.Network{}, fmt.Errorf("stored network %s: gateway: %w", out.Name, err)
		}
	}
	return out, nil
}

// Service converts a stored service's endpoint to the allocator's form;
// ok is false for a service without one.
func Service(svc *api.Service) (sa allocator.ServiceAllocation, ok bool, err error) {
	ep := svc.GetEndpoint()
	if ep == nil {
		return sa, false, nil
	}
	sa = allocator.ServiceAllocation{ServiceID: svc.GetId(), Name: svc.GetSpec().GetName(),
		EndpointMode: svc.GetSpec().GetEndpoint().GetMode(), Networks: ep.GetNetworks()}
	if sa.Ports, err = Ports(ep.GetPorts()); err != nil {
		return sa, false, fmt.Errorf("stored service %s: %w", svc.GetSpec().GetName(), err)
	}
	for _, v := range ep.GetVips() {
		addr, err := netip.ParsePrefix(v.GetAddr())
		if err != nil {
			return sa, false, fmt.Errorf("stored service %s: VIP %q: %w", svc.GetSpec().GetName(), v.GetAddr(), err)
		}
		sa.VIPs = append(sa.VIPs, allocator.VIP{NetworkID: v.GetNetworkId(), Addr: addr})
	}
	return sa, true, nil
}

// Ports converts published ports from a spec or a stored endpoint,
// normalised by the API's rules (api.NormalizePort); a port they refuse
// is refused (allocator.ErrInvalid) naming the entry.
func Ports(ports []*api.PortConfig) ([]allocator.PortConfig, error) {
	out := make([]allocator.PortConfig, 0, len(ports))
	for i, p := range ports {
		n, err := api.NormalizePort(p)
		if err != nil {
			return nil, fmt.Errorf("endpoint.ports[%d]: %w", i, err)
		}
		out = append(out, allocator.PortConfig{Protocol: n.GetProtocol(), Target: uint16(n.GetTarget()),
			Published: uint16(n.GetPublished()), Mode: n.GetMode(), Traffic: n.GetTraffic()})
	}
	return out, nil
}

// APIPorts converts the allocator's ports to stored ones.
func APIPorts(ports []allocator.PortConfig) []*api.PortConfig {
	out := make([]*api.PortConfig, 0, len(ports))
	for _, p := range ports {
		out = append(out, &api.PortConfig{Protocol: p.Protocol, Target: uint32(p.Target), Published: uint32(p.Published), Mode: p.Mode, Traffic: p.Traffic})
	}
	return out
}

// Endpoint is the stored form of a service's allocation.
func Endpoint(sa allocator.ServiceAllocation) *api.Endpoint {
	ep := &api.Endpoint{Ports: APIPorts(sa.Ports), Networks: sa.Networks}
	for _, v := range sa.VIPs {
		ep.Vips = append(ep.Vips, &api.EndpointVIP{NetworkId: v.NetworkID, Addr: v.Addr.String()})
	}
	return ep
}

// Attachment converts a stored attachment to the allocator's form.
func Attachment(at *api.NetworkAttachment) (allocator.Attachment, error) {
	addr, err := netip.ParsePrefix(at.GetAddr())
	if err != nil {
		return allocator.Attachment{}, fmt.Errorf("address %q on network %s: %w", at.GetAddr(), at.GetNetworkId(), err)
	}
	out := allocator.Attachment{NetworkID: at.GetNetworkId(), Addr: addr}
	if at.GetMac() != "" {
		if out.MAC, err = net.ParseMAC(at.GetMac()); err != nil {
			return allocator.Attachment{}, fmt.Errorf("MAC %q on network %s: %w", at.GetMac(), at.GetNetworkId(), err)
		}
	}
	return out, nil
}

// APIAttachment is the stored form of an attachment.
func APIAttachment(a allocator.Attachment) *api.NetworkAttachment {
	return &api.NetworkAttachment{NetworkId: a.NetworkID, Addr: a.Addr.String(), Mac: a.MAC.String()}
}

// APIAttachments converts a task's attachments.
func APIAttachments(as []allocator.Attachment) []*api.NetworkAttachment {
	out := make([]*api.NetworkAttachment, 0, len(as))
	for _, a := range as {
		out = append(out, APIAttachment(a))
	}
	return out
}
