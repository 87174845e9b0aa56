package netagent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vipLabel marks the loopback addresses that are service VIPs, so the agent
// finds its own again after a restart and leaves the others alone.
const vipLabel = "lo:shoalvip"

// vipAddrs keeps the node's VIPs on its loopback device. A VIP lies inside
// its network's subnet, so a task asks ARP for it rather than sending to its
// gateway; the node answers for any address it holds (arp_ignore 0), the
// frame reaches the node, and the load balancer's DNAT takes it from there.
// Loopback rather than the bridge, whose addresses the overlay manager owns,
// or a dummy device, which not every kernel has.
type vipAddrs struct {
	nl *netlink.Handle
}

// sync makes the labelled loopback addresses exactly want (IPv4 only: the
// overlays are).
func (v *vipAddrs) sync(want []netip.Addr) error {
	lo, err := v.nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("VIP addresses: loopback: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := v.nl.LinkSetUp(lo); err != nil {
			return fmt.Errorf("VIP addresses: set loopback up: %w", err)
		}
	}
	cur, err := v.nl.AddrList(lo, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("VIP addresses: list loopback addresses: %w", err)
	}
	var errs []error
	have := map[netip.Addr]bool{}
	for _, a := range cur {
		if a.Label != vipLabel {
			continue
		}
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		if ones, _ := a.Mask.Size(); ones == 32 && slices.Contains(want, ip) {
			have[ip] = true
			continue
		}
		if err := v.nl.AddrDel(lo, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("remove VIP %s from loopback: %w", a.IPNet, err))
		}
	}
	for _, ip := range want {
		if !ip.Is4() || have[ip] {
			continue
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}, Label: vipLabel}
		if err := v.nl.AddrAdd(lo, a); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("add VIP %s to loopback: %w", ip, err))
		}
	}
	return errors.Join(errs...)
}
