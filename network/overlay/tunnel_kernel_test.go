package overlay_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/network/attach"
	"github.com/shoal-project/shoal/network/attach/netnstest"
	"github.com/shoal-project/shoal/network/ipam"
	"github.com/shoal-project/shoal/network/overlay"
)

// The WireGuard tunnel itself is tested where the kernel has WireGuard
// (the VM tier: e2e/vm TestEncryptedNetwork). These tests stand a veth
// pair in for it, named like the tunnel and carrying the nodes' tunnel
// addresses, to check what this host's kernel can: that an encrypted
// network's VXLAN runs over IPv6 between tunnel addresses, on the tunnel
// device and nowhere else.

func TestTunnelAddrIsStableAndInPrefix(t *testing.T) {
	a, b := overlay.TunnelAddr("node-a"), overlay.TunnelAddr("node-b")
	if !overlay.TunnelPrefix.Contains(a) || !overlay.TunnelPrefix.Contains(b) {
		t.Fatalf("tunnel addresses %s, %s not in %s", a, b, overlay.TunnelPrefix)
	}
	if a == b {
		t.Fatalf("two nodes share tunnel address %s", a)
	}
	if again := overlay.TunnelAddr("node-a"); again != a {
		t.Fatalf("TunnelAddr(node-a) = %s, then %s", a, again)
	}
}

// tunnelNode is a simulated host whose tunnel is a plain veth.
type tunnelNode struct {
	*node
	id     string
	tunnel netip.Addr
}

func encryptedState(peer tunnelNode, remote ...netip.Addr) overlay.NetworkState {
	s := overlay.NetworkState{
		Network: overlay.Network{ID: "secret", VNI: vni, Subnet: subnet, Gateway: gateway, Encrypted: true},
		Peers:   []overlay.Peer{{VTEP: peer.tunnel}},
	}
	for _, ip := range remote {
		s.Endpoints = append(s.Endpoints, overlay.Endpoint{Addr: ip, MAC: ipam.MACFromIP(ip), VTEP: peer.tunnel})
	}
	return s
}

// twoTunnelNodes is twoNodes with an encrypted network: an underlay veth,
// and a second veth pair named overlay.TunnelName with the tunnel
// addresses.
func twoTunnelNodes(t *testing.T) (a, b tunnelNode, taskA, taskB *netnstest.NS) {
	netnstest.RequireKernel(t)
	nsA, nsB := netnstest.New(t, "nodeA"), netnstest.New(t, "nodeB")
	netnstest.Link(t, nsA, "ul0", "10.232.0.1/24", nsB, "ul0", "10.232.0.2/24")
	netnstest.Link(t, nsA, overlay.TunnelName, "", nsB, overlay.TunnelName, "")
	mk := func(ns *netnstest.NS, id string, vtep netip.Addr) tunnelNode {
		addr := overlay.TunnelAddr(id)
		ns.MustRun(t, "ip", "addr", "add", netip.PrefixFrom(addr, 64).String(), "dev", overlay.TunnelName, "nodad")
		return tunnelNode{node: newTunnelNode(t, ns, vtep, addr), id: id, tunnel: addr}
	}
	a, b = mk(nsA, "node-a", vtepA), mk(nsB, "node-b", vtepB)
	ctx := context.Background()
	if err := a.mgr.Apply(ctx, []overlay.NetworkState{encryptedState(b, taskIPB)}); err != nil {
		t.Fatalf("apply on node A: %v", err)
	}
	if err := b.mgr.Apply(ctx, []overlay.NetworkState{encryptedState(a, taskIPA)}); err != nil {
		t.Fatalf("apply on node B: %v", err)
	}
	taskA, taskB = netnstest.New(t, "taskA"), netnstest.New(t, "taskB")
	for _, x := range []struct {
		n    tunnelNode
		task *netnstest.NS
		ip   netip.Addr
	}{{a, taskA, taskIPA}, {b, taskB, taskIPB}} {
		attachEncrypted(t, x.n.node, x.task, x.ip)
	}
	return a, b, taskA, taskB
}

func TestEncryptedNetworkRunsOverTheTunnel(t *testing.T) {
	a, _, taskA, taskB := twoTunnelNodes(t)
	netnstest.Listen(t, taskB, "10.233.0.3:7000")
	if err := netnstest.Dial(taskA, "10.233.0.3:7000"); err != nil {
		t.Fatalf("task A to task B over the encrypted network: %v", err)
	}

	// The VXLAN device sends from the tunnel address over the tunnel.
	vx, err := handle(t, a.ns).LinkByName(overlay.VXLANName(vni))
	if err != nil {
		t.Fatal(err)
	}
	tun, err := handle(t, a.ns).LinkByName(overlay.TunnelName)
	if err != nil {
		t.Fatal(err)
	}
	v := vx.(*netlink.Vxlan)
	if src, _ := netip.AddrFromSlice(v.SrcAddr); src != a.tunnel || v.VtepDevIndex != tun.Attrs().Index {
		t.Fatalf("VXLAN device: local %s on device %d; want %s on %s (%d)", v.SrcAddr, v.VtepDevIndex, a.tunnel, overlay.TunnelName, tun.Attrs().Index)
	}
	// Underlay 1500, less WireGuard's 60 and VXLAN over IPv6's 70.
	if out := taskA.MustRun(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1370 ") {
		t.Fatalf("task eth0 on an encrypted network over a 1500 underlay: %s; want mtu 1370", out)
	}

	// Nothing of it takes the underlay: with the tunnel down, the tasks
	// no longer meet, though the underlay is up.
	a.ns.MustRun(t, "ip", "link", "set", overlay.TunnelName, "down")
	if err := netnstest.Dial(taskA, "10.233.0.3:7000"); err == nil {
		t.Fatal("task A reached task B with the tunnel down: the encrypted network's traffic went another way")
	}
}

func TestEncryptedNetworkRefusesUnderlayVTEPs(t *testing.T) {
	ns, mgr := loneTunnelNode(t)
	ctx := context.Background()
	// A data address as an encrypted network's VTEP would send it in the
	// clear: refused, and nothing made.
	bad := encryptedState(tunnelNode{tunnel: vtepB})
	if err := mgr.Apply(ctx, []overlay.NetworkState{bad}); err == nil || !strings.Contains(err.Error(), "need a tunnel address") {
		t.Fatalf("encrypted network with an underlay VTEP: %v", err)
	}
	// Without a tunnel device (no WireGuard), an encrypted network is not
	// built on the underlay instead.
	good := encryptedState(tunnelNode{tunnel: overlay.TunnelAddr("node-b")})
	if err := mgr.Apply(ctx, []overlay.NetworkState{good}); err == nil || !strings.Contains(err.Error(), overlay.TunnelName) {
		t.Fatalf("encrypted network without a tunnel device: %v", err)
	}
	if _, err := handle(t, ns).LinkByName(overlay.VXLANName(vni)); err == nil {
		t.Fatal("a VXLAN device was made for an encrypted network that has no tunnel")
	}
}

func TestTunnelWithoutWireGuard(t *testing.T) {
	ns, mgr := loneTunnelNode(t)
	if _, err := mgr.TunnelKey(); err == nil {
		t.Skip("this kernel has WireGuard: the VM tier's test covers the tunnel")
	} else if !strings.Contains(err.Error(), "no WireGuard") {
		t.Fatalf("TunnelKey without WireGuard: %v", err)
	}
	err := mgr.ApplyTunnel(overlay.TunnelState{Active: true})
	if err == nil || !strings.Contains(err.Error(), "need WireGuard") {
		t.Fatalf("ApplyTunnel without WireGuard: %v", err)
	}
	if err := mgr.ApplyTunnel(overlay.TunnelState{}); err != nil {
		t.Fatalf("ApplyTunnel(inactive) without WireGuard: %v", err)
	}
	links, err := handle(t, ns).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "shw-") {
			t.Errorf("link %s left behind", l.Attrs().Name)
		}
	}
}

// handle is a netlink handle in ns, closed at the end of the test.
func handle(t *testing.T, ns *netnstest.NS) *netlink.Handle {
	t.Helper()
	h, err := netns.GetFromPath(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// ExpectWireGuardEnv set to 1 makes a kernel without WireGuard fail the
// WireGuard tests instead of skipping them: the VM tier sets it, where the
// kernel has WireGuard.
const ExpectWireGuardEnv = "SHOAL_EXPECT_WIREGUARD"

// TestWireGuardTunnel runs an encrypted network over a real WireGuard
// tunnel between two simulated nodes: the tasks meet, the underlay
// carries WireGuard (UDP 51820) and no VXLAN at all; the device keeps its
// key across a new Manager (a restarted daemon); a peer removed from the
// tunnel is cut off; an inactive tunnel leaves no device.
func TestWireGuardTunnel(t *testing.T) {
	netnstest.RequireKernel(t)
	nsA, nsB := netnstest.New(t, "nodeA"), netnstest.New(t, "nodeB")
	netnstest.Link(t, nsA, "ul0", "10.232.0.1/24", nsB, "ul0", "10.232.0.2/24")
	type wgNode struct {
		tunnelNode
		key [32]byte
	}
	mk := func(ns *netnstest.NS, id string, vtep netip.Addr) wgNode {
		addr := overlay.TunnelAddr(id)
		n := newTunnelNode(t, ns, vtep, addr)
		key, err := n.mgr.TunnelKey()
		if err != nil {
			if os.Getenv(ExpectWireGuardEnv) == "1" {
				t.Fatalf("%s=1 but: %v", ExpectWireGuardEnv, err)
			}
			t.Skipf("no WireGuard here (%v): the VM tier runs this test", err)
		}
		return wgNode{tunnelNode{node: n, id: id, tunnel: addr}, key}
	}
	a, b := mk(nsA, "node-a", vtepA), mk(nsB, "node-b", vtepB)
	peerOf := func(n wgNode) overlay.TunnelPeer {
		return overlay.TunnelPeer{Key: n.key, Endpoint: n.vtep, Addr: n.tunnel}
	}
	ctx := context.Background()
	for _, x := range []struct {
		n, other wgNode
		ip       netip.Addr
		task     *netnstest.NS
	}{{a, b, taskIPA, nil}, {b, a, taskIPB, nil}} {
		if err := x.n.mgr.ApplyTunnel(overlay.TunnelState{Active: true, Peers: []overlay.TunnelPeer{peerOf(x.other)}}); err != nil {
			t.Fatalf("ApplyTunnel on %s: %v", x.n.id, err)
		}
		remote := taskIPB
		if x.n.id == b.id {
			remote = taskIPA
		}
		if err := x.n.mgr.Apply(ctx, []overlay.NetworkState{encryptedState(x.other.tunnelNode, remote)}); err != nil {
			t.Fatalf("Apply on %s: %v", x.n.id, err)
		}
	}
	taskA, taskB := netnstest.New(t, "taskA"), netnstest.New(t, "taskB")
	for _, x := range []struct {
		n    wgNode
		task *netnstest.NS
		ip   netip.Addr
	}{{a, taskA, taskIPA}, {b, taskB, taskIPB}} {
		attachEncrypted(t, x.n.node, x.task, x.ip)
	}
	// What node A sends on its underlay, by UDP port.
	nsA.MustRun(t, "nft", "add table inet probe")
	nsA.MustRun(t, "nft", "add chain inet probe out { type filter hook output priority 0; }")
	nsA.MustRun(t, "nft", `add rule inet probe out oifname "ul0" udp dport 4789 counter`)
	nsA.MustRun(t, "nft", `add rule inet probe out oifname "ul0" udp dport 51820 counter`)
	counters := func() (vxlan, wg int) {
		out := nsA.MustRun(t, "nft", "list chain inet probe out")
		for _, line := range strings.Split(out, "\n") {
			_, after, ok := strings.Cut(line, "counter packets ")
			if !ok {
				continue
			}
			var n int
			fmt.Sscan(after, &n)
			switch {
			case strings.Contains(line, "dport 4789"):
				vxlan = n
			case strings.Contains(line, "dport 51820"):
				wg = n
			}
		}
		return vxlan, wg
	}

	netnstest.Listen(t, taskB, "10.233.0.3:7000")
	if err := netnstest.Dial(taskA, "10.233.0.3:7000"); err != nil {
		t.Fatalf("task A to task B over WireGuard: %v", err)
	}
	if vxlan, wg := counters(); vxlan != 0 || wg == 0 {
		t.Fatalf("node A's underlay carried %d VXLAN and %d WireGuard packets; want 0 VXLAN in the clear, some WireGuard", vxlan, wg)
	}

	// The same state again changes nothing, and a new manager (a
	// restarted daemon) takes the device's key instead of making one.
	if err := a.mgr.ApplyTunnel(overlay.TunnelState{Active: true, Peers: []overlay.TunnelPeer{peerOf(b)}}); err != nil {
		t.Fatal(err)
	}
	again, err := overlay.NewManager(overlay.Config{UnderlayAddr: vtepA, TunnelAddr: a.tunnel, NetNSPath: nsA.Path, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if k, err := again.TunnelKey(); err != nil || k != a.key {
		t.Fatalf("key after a restart: %v, %v; want the device's %v", k, err, a.key)
	}
	if err := netnstest.Dial(taskA, "10.233.0.3:7000"); err != nil {
		t.Fatalf("task A to task B after the restart: %v", err)
	}

	// Node B drops node A as a peer: A's packets no longer get in.
	if err := b.mgr.ApplyTunnel(overlay.TunnelState{Active: true}); err != nil {
		t.Fatal(err)
	}
	if err := netnstest.Dial(taskA, "10.233.0.3:7000"); err == nil {
		t.Fatal("task A reached task B after B removed A from its tunnel")
	}

	// Inactive: no device.
	if err := b.mgr.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.mgr.ApplyTunnel(overlay.TunnelState{}); err != nil {
		t.Fatal(err)
	}
	if _, err := handle(t, nsB).LinkByName(overlay.TunnelName); err == nil {
		t.Fatalf("%s still there after an inactive ApplyTunnel", overlay.TunnelName)
	}
}

// attachEncrypted attaches task at ip to the encrypted network on n, with
// the network's MTU.
func attachEncrypted(t *testing.T, n *node, task *netnstest.NS, ip netip.Addr) {
	t.Helper()
	mtu, err := n.mgr.MTU(overlay.Network{VNI: vni, Encrypted: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.att.Attach(context.Background(), attach.Spec{
		ID: "task-" + ip.String(), NetNSPath: task.Path, Bridge: overlay.BridgeName(vni),
		Addr: netip.PrefixFrom(ip, subnet.Bits()), Gateway: gateway, MTU: mtu,
	}); err != nil {
		t.Fatal(err)
	}
}

// loneTunnelNode is one simulated host, with an underlay and a tunnel
// address but no tunnel device, and its overlay manager.
func loneTunnelNode(t *testing.T) (*netnstest.NS, *overlay.Manager) {
	t.Helper()
	netnstest.RequireKernel(t)
	ns := netnstest.New(t, "nodeA")
	netnstest.Link(t, ns, "ul0", "10.232.0.1/24", netnstest.New(t, "nodeB"), "ul0", "10.232.0.2/24")
	mgr, err := overlay.NewManager(overlay.Config{UnderlayAddr: vtepA, TunnelAddr: overlay.TunnelAddr("node-a"), NetNSPath: ns.Path, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	return ns, mgr
}
