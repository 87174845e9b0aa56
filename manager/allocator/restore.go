package allocator

import (
	"errors"
	"fmt"
	"net/netip"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/network/ipam"
)

// Restore replaces the allocator's state with st, as read from the store
// after a restart or a change of leader. It restores everything consistent
// and skips each network, service, task or node whose allocation clashes
// with one restored before it (an overlapping subnet, an address or port
// held twice, an unknown network); the returned error names every skipped
// object so the caller can release and allocate it again.
func (a *Allocator) Restore(st Allocation) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.reset(); err != nil {
		return err
	}
	var errs []error
	for _, n := range st.Networks {
		if err := a.restoreNetwork(n); err != nil {
			errs = append(errs, fmt.Errorf("restore network %s: %w", n.Name, err))
		}
	}
	for _, s := range st.Services {
		if err := a.restoreService(s); err != nil {
			errs = append(errs, fmt.Errorf("restore service %s: %w", s.Name, err))
		}
	}
	for _, t := range st.Tasks {
		if err := a.restoreTask(t); err != nil {
			errs = append(errs, fmt.Errorf("restore task %s: %w", t.TaskID, err))
		}
	}
	for _, nd := range st.Nodes {
		if err := a.restoreNode(nd); err != nil {
			errs = append(errs, fmt.Errorf("restore node %s: %w", nd.NodeID, err))
		}
	}
	return errors.Join(errs...)
}

func (a *Allocator) restoreNetwork(n Network) error {
	if n.ID == "" || !n.Subnet.IsValid() || n.VNI == 0 {
		return fmt.Errorf("%w: id, subnet and VNI are required", ErrInvalid)
	}
	if _, ok := a.networks[n.ID]; ok {
		return fmt.Errorf("%w: id %s listed twice", ErrConflict, n.ID)
	}
	if n.Ingress && a.ingress() != nil {
		return fmt.Errorf("%w: a second ingress network", ErrConflict)
	}
	ips, err := ipam.NewAllocator(n.Subnet, n.Gateway)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := a.pool.Reserve(n.Subnet); err != nil {
		return fmt.Errorf("%w: %w", ErrConflict, err)
	}
	if err := a.vnis.AllocateSpecific(n.VNI); err != nil {
		a.pool.Release(n.Subnet)
		return fmt.Errorf("%w: %w", ErrConflict, err)
	}
	n.Gateway = ips.Gateway()
	a.networks[n.ID] = &network{Network: n, ips: ips}
	return nil
}

// claimAddr marks addr as used on network id, adding its release to u.
func (a *Allocator) claimAddr(u *undo, id string, addr netip.Prefix) error {
	n, ok := a.networks[id]
	if !ok {
		return fmt.Errorf("%w: network %q", ErrNotFound, id)
	}
	if err := n.ips.AllocateSpecific(addr.Addr()); err != nil {
		return fmt.Errorf("%w: network %s: %w", ErrConflict, n.Name, err)
	}
	u.add(func() { _ = n.ips.Release(addr.Addr()) })
	return nil
}

func (a *Allocator) restoreService(s ServiceAllocation) error {
	if _, ok := a.services[s.ServiceID]; ok || s.ServiceID == "" {
		return fmt.Errorf("%w: id %q missing or listed twice", ErrConflict, s.ServiceID)
	}
	for _, id := range s.Networks {
		if _, ok := a.networks[id]; !ok {
			return fmt.Errorf("%w: network %q", ErrNotFound, id)
		}
	}
	keys := map[portKey]bool{}
	for _, p := range s.Ports {
		if p.Mode != api.ModeIngress || p.Published == 0 {
			continue
		}
		k := portKey{p.Protocol, p.Published}
		if holder, ok := a.ports[k]; ok {
			return fmt.Errorf("%w: published port %s is already used by service %s", ErrConflict, k, a.services[holder].Name)
		}
		keys[k] = true
	}
	var u undo
	for _, v := range s.VIPs {
		if err := a.claimAddr(&u, v.NetworkID, v.Addr); err != nil {
			u.run()
			return fmt.Errorf("VIP %s: %w", v.Addr, err)
		}
	}
	for k := range keys {
		a.ports[k] = s.ServiceID
	}
	a.services[s.ServiceID] = s.clone()
	return nil
}

func (a *Allocator) restoreTask(t TaskAllocation) error {
	if _, ok := a.tasks[t.TaskID]; ok || t.TaskID == "" {
		return fmt.Errorf("%w: id %q missing or listed twice", ErrConflict, t.TaskID)
	}
	var u undo
	for _, at := range t.Attachments {
		if err := a.claimAddr(&u, at.NetworkID, at.Addr); err != nil {
			u.run()
			return fmt.Errorf("address %s: %w", at.Addr, err)
		}
	}
	a.tasks[t.TaskID] = t.clone()
	return nil
}

func (a *Allocator) restoreNode(nd NodeAllocation) error {
	if _, ok := a.nodes[nd.NodeID]; ok || nd.NodeID == "" {
		return fmt.Errorf("%w: id %q missing or listed twice", ErrConflict, nd.NodeID)
	}
	var u undo
	if err := a.claimAddr(&u, nd.Ingress.NetworkID, nd.Ingress.Addr); err != nil {
		return fmt.Errorf("ingress address %s: %w", nd.Ingress.Addr, err)
	}
	a.nodes[nd.NodeID] = nd.clone()
	return nil
}
