package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// checkSubnetFree refuses a subnet that overlaps an address the host
// already has: the lab's route would shadow (or be shadowed by) it.
func checkSubnetFree(subnet netip.Prefix) error {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok || !p.Overlaps(subnet) {
			continue
		}
		name := fmt.Sprint(a.LinkIndex)
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		return fmt.Errorf("subnet %s overlaps %s on %s: choose another --subnet", subnet, p, name)
	}
	return nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// dumpRetries bounds retrying a netlink dump that the kernel interrupted
// because the list changed meanwhile (links vanish while Down runs, as the
// kernel frees namespaces lazily). A few tries always suffice.
const dumpRetries = 10

// retryDump repeats a netlink dump until it is consistent.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		out, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries {
			return out, err
		}
	}
}

// createBridge makes the underlay bridge with the gateway address.
func createBridge(gateway netip.Prefix) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", BridgeName, err)
	}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(gateway)}); err != nil {
		return fmt.Errorf("address bridge %s with %s: %w", BridgeName, gateway, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %s up: %w", BridgeName, err)
	}
	return nil
}

// onFreshThread runs fn on an OS thread of its own and throws the thread
// away afterwards: fn may move the thread into another network namespace,
// and no other goroutine must ever run there.
func onFreshThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread exits with this goroutine.
		errc <- fn()
	}()
	return <-errc
}

// createNetns makes the named network namespace of a node.
func createNetns(name string) error {
	return onFreshThread(func() error {
		ns, err := netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create network namespace %s: %w", name, err)
		}
		return ns.Close()
	})
}

// plumbNode connects a node's namespace to the bridge: a veth with the
// host end on the bridge and eth0 inside, the node's address on eth0, lo
// up and the default route through the bridge.
func plumbNode(n Node, gateway netip.Prefix) error {
	ns, err := netns.GetFromName(n.Namespace)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", n.Namespace, err)
	}
	defer ns.Close()
	br, err := netlink.LinkByName(BridgeName)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", BridgeName, err)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: n.Link(), MasterIndex: br.Attrs().Index},
		PeerName:  "eth0",
		// Made inside the namespace directly: the host may have its own eth0.
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s for %s: %w", n.Link(), n.Name, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", n.Link(), err)
	}

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", n.Namespace, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", n.Namespace, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", n.Namespace, err)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", n.Namespace, err)
	}
	addr := netip.PrefixFrom(n.Addr, gateway.Bits())
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("address eth0 in %s with %s: %w", n.Namespace, addr, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("set eth0 up in %s: %w", n.Namespace, err)
	}
	route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gateway.Addr().AsSlice()}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("default route via %s in %s: %w", gateway.Addr(), n.Namespace, err)
	}
	return nil
}

// setLink sets a node's host-side veth up or down.
func setLink(name string, up bool) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if up {
		err = netlink.LinkSetUp(l)
	} else {
		err = netlink.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("set link %s up=%v: %w", name, up, err)
	}
	return nil
}

// startIn starts cmd inside the named network namespace. The child is
// forked from a thread that joined the namespace, so it is born there;
// the thread is thrown away afterwards.
func startIn(namespace string, cmd *exec.Cmd) error {
	ns, err := netns.GetFromName(namespace)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", namespace, err)
	}
	defer ns.Close()
	return onFreshThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", namespace, err)
		}
		return cmd.Start()
	})
}

// labNetns lists the named network namespaces that belong to a lab.
func labNetns() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), NamespacePrefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// deleteNetns unmounts and removes a named namespace; the kernel frees it
// (and the veth end inside) once no process is left in it. It also copes
// with a file that was created but never mounted.
func deleteNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	// A namespace file can be mounted more than once (propagation from a
	// shared /run/netns); unmount until nothing is left.
	for range 8 {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				break
			}
			return fmt.Errorf("unmount network namespace %s: %w", name, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove network namespace %s: %w", name, err)
	}
	return nil
}

// labLinks lists the host's links the lab made: the bridge and the host
// ends of the node veths.
func labLinks() ([]netlink.Link, error) {
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		name := l.Attrs().Name
		switch {
		case name == BridgeName && l.Type() == "bridge",
			strings.HasPrefix(name, LinkPrefix) && l.Type() == "veth":
			out = append(out, l)
		}
	}
	return out, nil
}

// netnsInode returns the inode identifying a namespace file, to find the
// processes inside it.
func netnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// netlinkDelete deletes a link; one already gone counts as deleted (a
// veth goes with its peer's namespace, which the kernel frees lazily).
func netlinkDelete(l netlink.Link) error {
	err := netlink.LinkDel(l)
	var notFound netlink.LinkNotFoundError
	if err == nil || errors.Is(err, unix.ENODEV) || errors.As(err, &notFound) {
		return nil
	}
	return fmt.Errorf("delete link %s: %w", l.Attrs().Name, err)
}
