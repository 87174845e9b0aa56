package netagent

import (
	"bytes"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network/attach"
)

// attached reports whether the interface s asks for is already in place:
// the host end on its bridge and up, its peer in the task's namespace with
// the name, MAC, MTU and address asked, and the default route when s has a
// gateway. Attach then leaves it alone, so attaching a running task again
// (after an agent restart, say) does not cut its connections.
func attached(host *netlink.Handle, s attach.Spec) bool {
	h, err := host.LinkByName(attach.HostVethName(s.ID))
	if err != nil {
		return false
	}
	br, err := host.LinkByName(s.Bridge)
	if err != nil || h.Attrs().MasterIndex != br.Attrs().Index || h.Attrs().Flags&net.FlagUp == 0 || h.Attrs().MTU != s.MTU {
		return false
	}
	ns, err := netns.GetFromPath(s.NetNSPath)
	if err != nil {
		return false
	}
	defer ns.Close()
	task, err := netlink.NewHandleAt(ns)
	if err != nil {
		return false
	}
	defer task.Close()
	l, err := task.LinkByName(s.IfName)
	if err != nil {
		return false
	}
	la := l.Attrs()
	// IFLA_LINK of a veth end is its peer's index.
	if la.ParentIndex != h.Attrs().Index || !bytes.Equal(la.HardwareAddr, s.MAC) || la.MTU != s.MTU || la.Flags&net.FlagUp == 0 {
		return false
	}
	addrs, err := task.AddrList(l, unix.AF_INET)
	if err != nil {
		return false
	}
	found := false
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		found = found || netip.PrefixFrom(ip, ones) == s.Addr
	}
	if !found {
		return false
	}
	if !s.Gateway.IsValid() {
		return true
	}
	routes, err := task.RouteList(l, unix.AF_INET)
	if err != nil {
		return false
	}
	for _, r := range routes {
		gw, _ := netip.AddrFromSlice(r.Gw.To4())
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && gw == s.Gateway {
			return true
		}
	}
	return false
}
