package overlay_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network/attach"
	"github.com/shoal-project/shoal/network/attach/netnstest"
	"github.com/shoal-project/shoal/network/ipam"
	"github.com/shoal-project/shoal/network/overlay"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

const vni = 4242

var quiet = slog.New(slog.DiscardHandler)

var (
	subnet  = netip.MustParsePrefix("10.233.0.0/24")
	gateway = netip.MustParseAddr("10.233.0.1")
	vtepA   = netip.MustParseAddr("10.232.0.1")
	vtepB   = netip.MustParseAddr("10.232.0.2")
	taskIPA = netip.MustParseAddr("10.233.0.2")
	taskIPB = netip.MustParseAddr("10.233.0.3")
)

// node is one simulated host: its namespace, overlay manager and attacher.
type node struct {
	ns   *netnstest.NS
	vtep netip.Addr
	mgr  *overlay.Manager
	att  *attach.Attacher
}

func newNode(t *testing.T, ns *netnstest.NS, vtep netip.Addr) *node {
	t.Helper()
	return newTunnelNode(t, ns, vtep, netip.Addr{})
}

// newTunnelNode is newNode with a tunnel address (overlay.Config.TunnelAddr),
// for encrypted networks.
func newTunnelNode(t *testing.T, ns *netnstest.NS, vtep, tunnel netip.Addr) *node {
	t.Helper()
	mgr, err := overlay.NewManager(overlay.Config{UnderlayAddr: vtep, TunnelAddr: tunnel, NetNSPath: ns.Path, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	att, err := attach.NewAttacher(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(att.Close)
	return &node{ns: ns, vtep: vtep, mgr: mgr, att: att}
}

func state(peer netip.Addr, remote ...netip.Addr) overlay.NetworkState {
	s := overlay.NetworkState{
		Network: overlay.Network{ID: "net1", VNI: vni, Subnet: subnet, Gateway: gateway},
		Peers:   []overlay.Peer{{VTEP: peer}},
	}
	for _, ip := range remote {
		s.Endpoints = append(s.Endpoints, overlay.Endpoint{Addr: ip, MAC: ipam.MACFromIP(ip), VTEP: peer})
	}
	return s
}

// twoNodes builds two nodes joined by an underlay veth (MTU 1500), each
// with network 10.233.0.0/24 and one task attached.
func twoNodes(t *testing.T) (a, b *node, taskA, taskB *netnstest.NS) {
	netnstest.RequireKernel(t)
	nsA, nsB := netnstest.New(t, "nodeA"), netnstest.New(t, "nodeB")
	netnstest.Link(t, nsA, "ul0", "10.232.0.1/24", nsB, "ul0", "10.232.0.2/24")
	a, b = newNode(t, nsA, vtepA), newNode(t, nsB, vtepB)
	ctx := context.Background()
	if err := a.mgr.Apply(ctx, []overlay.NetworkState{state(vtepB, taskIPB)}); err != nil {
		t.Fatalf("apply on node A: %v", err)
	}
	if err := b.mgr.Apply(ctx, []overlay.NetworkState{state(vtepA, taskIPA)}); err != nil {
		t.Fatalf("apply on node B: %v", err)
	}
	taskA, taskB = netnstest.New(t, "taskA"), netnstest.New(t, "taskB")
	for _, x := range []struct {
		n    *node
		task *netnstest.NS
		ip   netip.Addr
	}{{a, taskA, taskIPA}, {b, taskB, taskIPB}} {
		mtu, err := x.n.mgr.MTU(overlay.Network{VNI: vni})
		if err != nil {
			t.Fatal(err)
		}
		err = x.n.att.Attach(ctx, attach.Spec{
			ID: "task-" + x.ip.String(), NetNSPath: x.task.Path, Bridge: overlay.BridgeName(vni),
			Addr: netip.PrefixFrom(x.ip, subnet.Bits()), Gateway: gateway, MTU: mtu,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return a, b, taskA, taskB
}

func TestOverlayTaskToTaskAcrossVXLAN(t *testing.T) {
	a, b, taskA, taskB := twoNodes(t)
	ctx := context.Background()
	netnstest.Listen(t, taskB, "10.233.0.3:7000")
	netnstest.Listen(t, taskA, "10.233.0.2:7000")

	if err := netnstest.Dial(taskA, "10.233.0.3:7000"); err != nil {
		t.Fatalf("task A to task B: %v", err)
	}
	if err := netnstest.Dial(taskB, "10.233.0.2:7000"); err != nil {
		t.Fatalf("task B to task A: %v", err)
	}
	// With a node address on its bridge, listed as an endpoint on the other
	// node, node A reaches remote tasks itself (ingress DNAT needs it). The
	// gateway cannot serve: task B would answer its own node's bridge.
	withNode := state(vtepB, taskIPB)
	withNode.NodeAddr = netip.MustParseAddr("10.233.0.254")
	if err := a.mgr.Apply(ctx, []overlay.NetworkState{withNode}); err != nil {
		t.Fatal(err)
	}
	if err := b.mgr.Apply(ctx, []overlay.NetworkState{state(vtepA, taskIPA, withNode.NodeAddr)}); err != nil {
		t.Fatal(err)
	}
	if err := netnstest.Dial(a.ns, "10.233.0.3:7000"); err != nil {
		t.Fatalf("node A to task B: %v", err)
	}

	// Without task B's endpoint node A answers no ARP for it: once task A
	// forgets what it learned, B is unreachable.
	if err := a.mgr.Apply(ctx, []overlay.NetworkState{state(vtepB)}); err != nil {
		t.Fatal(err)
	}
	taskA.MustRun(t, "ip", "neigh", "flush", "all")
	if err := netnstest.Dial(taskA, "10.233.0.3:7000"); err == nil {
		t.Fatal("task A still reached task B after its endpoint was removed")
	}
	if err := a.mgr.Apply(ctx, []overlay.NetworkState{state(vtepB, taskIPB)}); err != nil {
		t.Fatal(err)
	}
	// Task A's failed ARP entry for B from the step above would make the
	// kernel answer "no route to host" for a few seconds: forget it, as
	// a task would once its neighbour entry expires.
	taskA.MustRun(t, "ip", "neigh", "flush", "all")
	if err := netnstest.Dial(taskA, "10.233.0.3:7000"); err != nil {
		t.Fatalf("task A to task B after the endpoint came back: %v", err)
	}
}

func TestOverlayTaskMTUIsUnderlayMinus50(t *testing.T) {
	_, _, taskA, _ := twoNodes(t)
	out := taskA.MustRun(t, "ip", "-o", "link", "show", "eth0")
	if !strings.Contains(out, "mtu 1450 ") {
		t.Fatalf("task eth0 over a 1500 underlay: %s; want mtu 1450", out)
	}
}

func TestOverlayApplyTwiceChangesNothing(t *testing.T) {
	a, _, _, _ := twoNodes(t)
	desired := []overlay.NetworkState{state(vtepB, taskIPB, netip.MustParseAddr("10.233.0.9"))}
	ctx := context.Background()
	if err := a.mgr.Apply(ctx, desired); err != nil {
		t.Fatal(err)
	}
	before := dump(t, a.ns)
	if err := a.mgr.Apply(ctx, desired); err != nil {
		t.Fatal(err)
	}
	if after := dump(t, a.ns); after != before {
		t.Fatalf("second Apply changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// A new manager (a restarted daemon) finds the same devices and changes nothing.
	again, err := overlay.NewManager(overlay.Config{UnderlayAddr: vtepA, NetNSPath: a.ns.Path, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.Apply(ctx, desired); err != nil {
		t.Fatal(err)
	}
	if after := dump(t, a.ns); after != before {
		t.Fatalf("Apply after a restart changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	for _, want := range []string{
		"fdb 00:00:00:00:00:00 dst 10.232.0.2",
		"fdb 02:42:0a:e9:00:03 dst 10.232.0.2",
		"fdb 02:42:0a:e9:00:09 dst 10.232.0.2",
		"neigh 10.233.0.9 lladdr 02:42:0a:e9:00:09",
		"vxlan id 4242 local 10.232.0.1 port 4789 learning false proxy true",
		"addr 10.233.0.1/24",
	} {
		if !strings.Contains(before, want) {
			t.Errorf("kernel state lacks %q:\n%s", want, before)
		}
	}
}

func TestOverlayNodeAddrIsPrimary(t *testing.T) {
	a, _, _, _ := twoNodes(t)
	s := state(vtepB, taskIPB)
	s.NodeAddr = netip.MustParseAddr("10.233.0.254")
	if err := a.mgr.Apply(context.Background(), []overlay.NetworkState{s}); err != nil {
		t.Fatal(err)
	}
	out := a.ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", overlay.BridgeName(vni))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "10.233.0.254/24") || strings.Contains(lines[0], "secondary") ||
		!strings.Contains(lines[1], "10.233.0.1/24") {
		t.Fatalf("bridge addresses:\n%s\nwant 10.233.0.254/24 primary then the gateway", out)
	}
}

func TestOverlayRemovedNetworkLeavesNoLinks(t *testing.T) {
	a, b, _, _ := twoNodes(t)
	ctx := context.Background()
	for _, n := range []*node{a, b} {
		if err := n.att.Detach(ctx, "task-"+map[*node]string{a: taskIPA.String(), b: taskIPB.String()}[n]); err != nil {
			t.Fatal(err)
		}
		if err := n.mgr.Apply(ctx, nil); err != nil {
			t.Fatal(err)
		}
		out := n.ns.MustRun(t, "ip", "-o", "link", "show")
		var names []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(l)
			names = append(names, strings.Split(strings.TrimSuffix(f[1], ":"), "@")[0])
		}
		slices.Sort(names)
		if got := strings.Join(names, " "); got != "lo ul0" {
			t.Fatalf("links left in %s: %s", n.ns.Name, got)
		}
	}
}

func TestOverlayApplyRefusesBadState(t *testing.T) {
	a, _, _, _ := twoNodes(t)
	ctx := context.Background()
	before := dump(t, a.ns)
	bad := state(vtepB, taskIPB)
	bad.Endpoints = append(bad.Endpoints, overlay.Endpoint{Addr: netip.MustParseAddr("10.99.0.1"), MAC: ipam.MACFromIP(taskIPB), VTEP: vtepB})
	err := a.mgr.Apply(ctx, []overlay.NetworkState{bad})
	if err == nil || !strings.Contains(err.Error(), "not in subnet") {
		t.Fatalf("Apply with an endpoint outside the subnet: %v", err)
	}
	if after := dump(t, a.ns); after != before {
		t.Fatalf("a refused network changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	dup := []overlay.NetworkState{state(vtepB), state(vtepB)}
	dup[1].ID = "other"
	if err := a.mgr.Apply(ctx, dup); err == nil || !strings.Contains(err.Error(), "already used by network net1") {
		t.Fatalf("two networks with one VNI: %v", err)
	}
}

// dump renders what the overlay owns in ns: its devices with their indexes
// (a recreated device gets a new one), attributes, addresses, FDB and
// neighbour entries.
func dump(t *testing.T, ns *netnstest.NS) string {
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
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range links {
		at := l.Attrs()
		if !strings.HasPrefix(at.Name, overlay.BridgePrefix) && !strings.HasPrefix(at.Name, overlay.VXLANPrefix) {
			continue
		}
		lines = append(lines, fmt.Sprintf("link %s index %d type %s mtu %d master %d flags %v mac %s",
			at.Name, at.Index, l.Type(), at.MTU, at.MasterIndex, at.Flags, at.HardwareAddr))
		if vx, ok := l.(*netlink.Vxlan); ok {
			lines = append(lines, fmt.Sprintf("  vxlan id %d local %s port %d learning %v proxy %v dev %d",
				vx.VxlanId, vx.SrcAddr, vx.Port, vx.Learning, vx.Proxy, vx.VtepDevIndex))
			fdb, err := nl.NeighList(at.Index, unix.AF_BRIDGE)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range fdb {
				if n.Flags&netlink.NTF_SELF != 0 && n.IP != nil {
					lines = append(lines, fmt.Sprintf("  fdb %s dst %s state %#x", n.HardwareAddr, n.IP, n.State))
				}
			}
			neigh, err := nl.NeighList(at.Index, unix.AF_INET)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range neigh {
				lines = append(lines, fmt.Sprintf("  neigh %s lladdr %s state %#x", n.IP, n.HardwareAddr, n.State))
			}
		}
		addrs, err := nl.AddrList(l, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			lines = append(lines, fmt.Sprintf("  addr %s flags %#x", ad.IPNet, ad.Flags))
		}
	}
	slices.Sort(lines[:0:0])
	return strings.Join(lines, "\n")
}
