package netagent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/network/attach/netnstest"
)

// The guard test's overlay: network app (VNI 4281) with task t1 of service
// web on node n1 at 10.251.0.10; node n2's data address is 10.240.0.2.
const (
	gVNI      = "4281"
	gTaskAddr = "10.251.0.10"
	gTaskMAC  = "02:42:0a:fb:00:0a"
	gPeer     = "10.240.0.2"
	gStranger = "10.241.0.2"
)

func guardDelta() *api.NetworkDelta {
	return &api.NetworkDelta{
		Networks: []*api.Network{{Id: "app", Subnet: "10.251.0.0/24", Gateway: kAppGW, Vni: 4281}},
		Peers:    []*api.NetworkPeer{peer(kNode, kDataAddr, ""), peer("n2", gPeer, "")},
		Endpoints: []*api.NetworkEndpoint{
			ep("t1", kNode, "web", true, att("app", gTaskAddr+"/24")),
		},
		Services: []*api.ServiceEndpoint{svc("web", "web", "vip", nil, &api.EndpointVIP{NetworkId: "app", Addr: kVIP + "/24"})},
	}
}

// TestKernelOverlayGuard: node n1 runs task t1 on overlay app. Two hosts
// on its underlay each hand-build a VXLAN device for app's VNI towards
// n1, with a static neighbour entry for t1, and send it UDP datagrams:
// the peer n2 (a current peer in the view) and a stranger that is not in
// it. The task's kernel counts what arrives. The peer's datagrams reach
// the task, the stranger's do not; once n2 leaves the peer set, its
// datagrams stop too, and come back when it returns. The resolver, on the
// gateway address, answers the task but not the stranger, which routes to
// that address through n1's underlay interface.
func TestKernelOverlayGuard(t *testing.T) {
	netnstest.RequireKernel(t)
	node, peerNS, stranger := netnstest.New(t, "node"), netnstest.New(t, "peer"), netnstest.New(t, "strg")
	netnstest.Link(t, node, "ul0", kDataAddr+"/24", peerNS, "eth0", gPeer+"/24")
	netnstest.Link(t, node, "ul1", "10.241.0.1/24", stranger, "eth0", gStranger+"/24")
	stranger.MustRun(t, "ip", "route", "add", "default", "via", "10.241.0.1")
	taskNS := netnstest.New(t, "task")

	a := newTestAgent(t, kNode, node, kDataAddr, LBNFTables)
	ctx := context.Background()
	delta := guardDelta()
	if err := a.Apply(ctx, delta, true); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	task := taskOf(delta.Endpoints[0])
	if err := a.Attach(ctx, task, taskNS.Path); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	t.Cleanup(func() { a.Detach(ctx, task) })

	for _, h := range []struct {
		ns          *netnstest.NS
		local, addr string
	}{{peerNS, gPeer, "10.251.0.90/24"}, {stranger, gStranger, "10.251.0.91/24"}} {
		h.ns.MustRun(t, "ip", "link", "add", "vx0", "type", "vxlan", "id", gVNI, "remote", kDataAddr,
			"local", h.local, "dstport", "4789", "nolearning")
		h.ns.MustRun(t, "ip", "addr", "add", h.addr, "dev", "vx0")
		h.ns.MustRun(t, "ip", "link", "set", "vx0", "up")
		h.ns.MustRun(t, "ip", "neigh", "replace", gTaskAddr, "lladdr", gTaskMAC, "dev", "vx0", "nud", "permanent")
	}

	t.Run("a peer's VXLAN reaches the task", func(t *testing.T) {
		if !injected(t, peerNS, taskNS) {
			t.Error("datagrams from the peer n2 over VXLAN did not reach the task")
		}
	})
	t.Run("a stranger's VXLAN is dropped", func(t *testing.T) {
		if injected(t, stranger, taskNS) {
			t.Errorf("datagrams from %s, not a peer, reached the task over VXLAN", gStranger)
		}
	})
	t.Run("a peer that left is dropped", func(t *testing.T) {
		if err := a.Apply(ctx, &api.NetworkDelta{RemovedPeers: []string{"n2"}}, false); err != nil {
			t.Fatal(err)
		}
		if injected(t, peerNS, taskNS) {
			t.Errorf("datagrams from %s reached the task after n2 left the peer set", gPeer)
		}
		if err := a.Apply(ctx, &api.NetworkDelta{Peers: []*api.NetworkPeer{peer("n2", gPeer, "")}}, false); err != nil {
			t.Fatal(err)
		}
		if !injected(t, peerNS, taskNS) {
			t.Error("datagrams from n2 did not reach the task after it came back")
		}
	})
	t.Run("the resolver answers the task, not the underlay", func(t *testing.T) {
		// Over the underlay, not the hand-built VXLAN device, which
		// would make the stranger a (dropped) overlay host.
		stranger.MustRun(t, "ip", "link", "del", "vx0")
		server := fmt.Sprintf("%s:%d", kAppGW, kDNSPort)
		if got, want := dnsQuery(t, taskNS, server, "tasks.web"), "NOERROR "+gTaskAddr; got != want {
			t.Errorf("tasks.web from the task: %q, want %q", got, want)
		}
		for _, name := range []string{"tasks.web", "example.com"} {
			// The guard drops it (no answer); without the guard the
			// resolver itself refuses it.
			if out, err := dnsTry(stranger, server, name); err == nil && !strings.HasPrefix(out, "REFUSED") {
				t.Errorf("%s from %s on the underlay: answered %q, want no answer or REFUSED", name, gStranger, out)
			}
		}
	})
	t.Run("a spoofed task address from the underlay does not reach the resolver", func(t *testing.T) {
		// The stranger claims to be a task of app and routes to the
		// gateway through n1's underlay interface; with rp_filter off (a
		// common setting) the kernel takes it, and the resolver's source
		// check alone would pass it. Its answer would go to the overlay,
		// so the stranger cannot see it: the guard's counter shows the
		// drop.
		node.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.ul1.rp_filter=0")
		stranger.MustRun(t, "ip", "addr", "add", "10.251.0.92/32", "dev", "lo")
		stranger.MustRun(t, "ip", "route", "add", kAppGW+"/32", "via", "10.241.0.1", "src", "10.251.0.92")
		before := dnsDrops(t, node)
		dnsTry(stranger, fmt.Sprintf("%s:%d", kAppGW, kDNSPort), "tasks.web")
		if after := dnsDrops(t, node); after <= before {
			t.Errorf("a query from the underlay with a task's source address was not dropped by %s (drops %d → %d)", GuardTable, before, after)
		}
	})
	t.Run("VXLAN over IPv6 from off the tunnel is dropped", func(t *testing.T) {
		// Only encrypted networks' VXLAN runs over IPv6, and only through
		// the WireGuard tunnel; the kernel would take a datagram for the
		// node's tunnel address on any interface.
		node.MustRun(t, "ip", "addr", "add", "fd00:241::1/64", "dev", "ul1", "nodad")
		stranger.MustRun(t, "ip", "addr", "add", "fd00:241::2/64", "dev", "eth0", "nodad")
		before := vxlan6Drops(t, node)
		stranger.MustRun(t, "bash", "-c", "echo probe >/dev/udp/fd00:241::1/4789")
		deadline := time.Now().Add(injectWait)
		for vxlan6Drops(t, node) <= before {
			if time.Now().After(deadline) {
				t.Fatalf("a VXLAN datagram over IPv6 from the underlay was not dropped by ip6 %s", GuardTable)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("Close removes the guard", func(t *testing.T) {
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if tables := node.MustRun(t, "nft", "list", "tables"); strings.Contains(tables, GuardTable) {
			t.Errorf("table %s left after Close:\n%s", GuardTable, tables)
		}
	})
}

// injectWait is how long a datagram sent over the hand-built VXLAN device
// may take to be counted by the task: a few milliseconds on a veth, with
// room for a loaded machine. An expected drop waits this long too.
const injectWait = 2 * time.Second

// injected sends three UDP datagrams from host to the task's closed port 9
// over host's VXLAN device and reports whether the task's kernel received
// any (its Udp NoPorts counter grew).
func injected(t *testing.T, host, task *netnstest.NS) bool {
	t.Helper()
	before := udpNoPorts(t, task)
	for range 3 {
		host.MustRun(t, "bash", "-c", "echo probe >/dev/udp/"+gTaskAddr+"/9")
	}
	deadline := time.Now().Add(injectWait)
	for time.Now().Before(deadline) {
		if udpNoPorts(t, task) > before {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// udpNoPorts reads the namespace's count of UDP datagrams that arrived for
// a port nothing listens on.
func udpNoPorts(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	out := ns.MustRun(t, "cat", "/proc/net/snmp")
	var header []string
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		for i, f := range header {
			if f == "NoPorts" && i < len(fields) {
				n, err := strconv.Atoi(fields[i])
				if err != nil {
					t.Fatalf("Udp NoPorts %q: %v", fields[i], err)
				}
				return n
			}
		}
	}
	t.Fatalf("no Udp NoPorts counter in /proc/net/snmp of %s:\n%s", ns.Name, out)
	return 0
}

// dnsDrops is how many packets the guard's rules for the resolver's port
// have dropped in ns (0 when there are none).
func dnsDrops(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	out, err := ns.Run("nft", "list", "table", "ip", GuardTable)
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "dport "+strconv.Itoa(kDNSPort)) {
			continue
		}
		_, after, ok := strings.Cut(line, "counter packets ")
		if !ok {
			continue
		}
		count, _, _ := strings.Cut(after, " ")
		c, err := strconv.Atoi(count)
		if err != nil {
			t.Fatalf("guard rule %q: counter %q: %v", line, count, err)
		}
		n += c
	}
	return n
}

// vxlan6Drops is how many packets the ip6 guard table has dropped in ns
// (0 when there is no table).
func vxlan6Drops(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	out, err := ns.Run("nft", "list", "table", "ip6", GuardTable)
	if err != nil {
		return 0
	}
	_, after, ok := strings.Cut(out, "counter packets ")
	if !ok {
		t.Fatalf("ip6 %s has no counter:\n%s", GuardTable, out)
	}
	count, _, _ := strings.Cut(after, " ")
	n, err := strconv.Atoi(count)
	if err != nil {
		t.Fatalf("ip6 %s: counter %q: %v", GuardTable, count, err)
	}
	return n
}

// dnsTry is dnsQuery for a query that may go unanswered: the error says
// why there was no answer.
func dnsTry(ns *netnstest.NS, server, name string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, exe)
	cmd.Env = append(os.Environ(), dnsHelperEnv+"="+server+" "+name)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
