package ipvs

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/network/attach/netnstest"
	"github.com/shoal-project/shoal/network/ipam"
	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/lbtest"
	"github.com/shoal-project/shoal/network/overlay"
)

// The two-node mesh of TestKernelEncapsulatedTrafficLeavesUnmarked: node a
// publishes port 8080 and its only backend, task, runs on node b, reached
// over the ingress overlay (VXLAN between the nodes' underlay addresses).
//
//	client 10.233.1.2 ── 10.233.1.1 a 10.233.0.1 ══ VXLAN ══ 10.233.0.2 b ── bridge ── task 10.233.2.10
//	                       a's ingress address 10.233.2.1        b's 10.233.2.2
var (
	vxUnderlayA = netip.MustParseAddr("10.233.0.1")
	vxUnderlayB = netip.MustParseAddr("10.233.0.2")
	vxNodeAddrA = netip.MustParseAddr("10.233.2.1")
	vxNodeAddrB = netip.MustParseAddr("10.233.2.2")
	vxTask      = netip.MustParseAddr("10.233.2.10")
	vxPublished = lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true,
		Backends: []lb.Backend{{Addr: vxTask, Port: 80}}}
)

const (
	vxVNI          = 4233
	vxRequests     = 3
	vxTableStandIn = "shoal-test-ipvs-standin"
	vxTableObserve = "shoal-test-observe"
	// vxMarkedEncap names the observer's counter of VXLAN datagrams that
	// reach IPVS's output hook carrying a mark of the balancer's.
	vxMarkedEncap = "marked-vxlan"
)

// TestKernelEncapsulatedTrafficLeavesUnmarked is the routing mesh bug the
// VMs showed: a published port timed out whenever its backend ran on
// another node, because the VXLAN datagram carrying a balanced packet kept
// that packet's mark, and IPVS's fwmark service, which matches any
// protocol, took the datagram at output and NATed it to the task's port.
//
// Two nodes over a real VXLAN overlay (package overlay's devices), the
// marker's real rules on node a, and traffic from a client and from node a
// itself. Where the kernel has IPVS, node a runs the real balancer. Where it
// has not, a stand-in does what IPVS would with marked packets: it DNATs
// the frontend's (IPVS scheduling them), and drops any other marked packet
// at IPVS's output hook priority (IPVS taking it for a new connection of
// its fwmark service; what it does with it after is no better). Either way
// an observer counts the VXLAN datagrams that reach that hook with a mark:
// there must be none, and every request must be answered by the task.
func TestKernelEncapsulatedTrafficLeavesUnmarked(t *testing.T) {
	lbtest.RequireRoot(t)
	requireNft(t)
	a, b := netnstest.New(t, "vxa"), netnstest.New(t, "vxb")
	client, task := netnstest.New(t, "vxcli"), netnstest.New(t, "vxtask")
	netnstest.Link(t, a, "ul0", vxUnderlayA.String()+"/24", b, "ul0", vxUnderlayB.String()+"/24")
	netnstest.Link(t, a, "cl0", "10.233.1.1/24", client, "eth0", "10.233.1.2/24")
	client.MustRun(t, "ip", "route", "add", "default", "via", "10.233.1.1")
	a.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	ing := overlay.Network{ID: "ingress", VNI: vxVNI, Subnet: netip.MustParsePrefix("10.233.2.0/24"), Gateway: netip.MustParseAddr("10.233.2.254")}
	applyOverlay(t, a, vxUnderlayA, overlay.NetworkState{Network: ing, NodeAddr: vxNodeAddrA,
		Peers:     []overlay.Peer{{VTEP: vxUnderlayB}},
		Endpoints: []overlay.Endpoint{{Addr: vxTask, MAC: ipam.MACFromIP(vxTask), VTEP: vxUnderlayB}}})
	applyOverlay(t, b, vxUnderlayB, overlay.NetworkState{Network: ing, NodeAddr: vxNodeAddrB,
		Peers:     []overlay.Peer{{VTEP: vxUnderlayA}},
		Endpoints: []overlay.Endpoint{{Addr: vxNodeAddrA, MAC: ipam.MACFromIP(vxNodeAddrA), VTEP: vxUnderlayA}}})
	netnstest.Link(t, b, "vtask", "", task, "eth0", "")
	b.MustRun(t, "ip", "link", "set", "vtask", "master", overlay.BridgeName(vxVNI))
	task.MustRun(t, "ip", "link", "set", "eth0", "address", ipam.MACFromIP(vxTask).String())
	task.MustRun(t, "ip", "addr", "add", vxTask.String()+"/24", "dev", "eth0")
	lbtest.ServeIn(t, task.Name, "task", "tcp", 80)

	if Available() {
		t.Log("the kernel has IPVS: node a runs the real balancer")
		bal, err := NewKernel(a.Path, WithMarkTable(testMarkTable))
		if err != nil {
			t.Fatalf("NewKernel: %v", err)
		}
		t.Cleanup(func() { bal.Close() })
		if err := bal.Apply(context.Background(), lb.State{Frontends: []lb.Frontend{vxPublished}}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	} else {
		t.Log("no IPVS in this kernel: node a runs the marker and a stand-in for IPVS")
		h, err := netns.GetFromPath(a.Path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		f := vxPublished
		f.Backends = nil
		setMarks(t, newTestMarker(t, h), Mark{Frontend: f, Mark: FirstMark})
		nftScript(t, a.Name, vxTableStandIn, fmt.Sprintf(`table ip %[1]s {
	chain schedule_in { type nat hook prerouting priority -100; meta mark %#[2]x meta l4proto tcp dnat to %[3]s; }
	chain schedule_out { type nat hook output priority -100; meta mark %#[2]x meta l4proto tcp dnat to %[3]s; }
	chain take { type filter hook output priority %[4]d; meta mark %#[2]x ct status & dnat == 0 drop; }
}`, vxTableStandIn, FirstMark, netip.AddrPortFrom(vxTask, 80), ipvsOutputPriority))
	}
	// Only the balancer's marks count: IPVS has services for no other, and
	// the kernel marks some packets of its own (IGMP reports from the
	// bridge went out with mark 0xc6).
	nftScript(t, a.Name, vxTableObserve, fmt.Sprintf(`table inet %s {
	chain out { type filter hook output priority %d; udp dport %d meta mark %#x-%#x counter comment %q; }
}`, vxTableObserve, ipvsOutputPriority-1, overlay.VXLANPort, FirstMark, FirstMark+MaxMarks-1, vxMarkedEncap))

	for _, c := range []struct {
		name string
		from *netnstest.NS
		to   netip.Addr
	}{
		{"from a client", client, netip.MustParseAddr("10.233.1.1")},
		{"from the node itself", a, vxUnderlayA},
	} {
		t.Run(c.name, func(t *testing.T) {
			replies := lbtest.Request(t, c.from.Name, "tcp", netip.AddrPortFrom(c.to, vxPublished.Port), vxRequests)
			for _, r := range replies {
				if r.Err != "" || r.Backend != "task" || r.Seen != vxNodeAddrA.String() {
					t.Errorf("published port %s on node a: replies %v, want %d from the task, which sees node a's ingress address %s",
						netip.AddrPortFrom(c.to, vxPublished.Port), lbtest.Count(replies), vxRequests, vxNodeAddrA)
					break
				}
			}
		})
	}
	if n := nftCounter(t, a.Name, vxTableObserve, vxMarkedEncap); n != 0 {
		t.Errorf("%d VXLAN datagrams reached IPVS's output hook carrying a balancer's mark, want 0:\n%s", n,
			a.MustRun(t, "nft", "list", "ruleset"))
	}
}

// ipvsOutputPriority is where IPVS schedules the node's own packets in
// output: NF_IP_PRI_NAT_DST + 2 (ip_vs_local_request4).
const ipvsOutputPriority = -98

func applyOverlay(t *testing.T, ns *netnstest.NS, underlay netip.Addr, s overlay.NetworkState) {
	t.Helper()
	m, err := overlay.NewManager(overlay.Config{UnderlayAddr: underlay, NetNSPath: ns.Path})
	if err != nil {
		t.Fatalf("overlay in %s: %v", ns.Name, err)
	}
	defer m.Close()
	if err := m.Apply(context.Background(), []overlay.NetworkState{s}); err != nil {
		t.Fatalf("overlay in %s: %v", ns.Name, err)
	}
}

// requireNft skips t without the nft tool, which the tests that count
// packets at chosen priorities use for readability.
func requireNft(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft tool (nftables) to count packets")
	}
}

// nft runs the nft tool in namespace ns with stdin.
func nft(t *testing.T, ns, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s in %s: %v: %s\n%s", strings.Join(args, " "), ns, err, out, stdin)
	}
	return string(out)
}

// nftScript loads an nft script that makes one table into namespace ns;
// the table is deleted at cleanup.
func nftScript(t *testing.T, ns, table, script string) {
	t.Helper()
	nft(t, ns, script, "-f", "-")
	family, _, _ := strings.Cut(strings.TrimPrefix(script, "table "), " ")
	t.Cleanup(func() {
		out, err := exec.Command("ip", "netns", "exec", ns, "nft", "delete", "table", family, table).CombinedOutput()
		if err != nil {
			t.Errorf("delete table %s %s in %s: %v: %s", family, table, ns, err, out)
		}
	})
}

// nftCounter reads the packets of the counter on the rule commented name,
// in an inet table.
func nftCounter(t *testing.T, ns, table, name string) uint64 {
	t.Helper()
	out := nft(t, ns, "", "-j", "list", "table", "inet", table)
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Comment string `json:"comment"`
				Expr    []struct {
					Counter *struct {
						Packets uint64 `json:"packets"`
					} `json:"counter"`
				} `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse nft -j output: %v: %s", err, out)
	}
	for _, o := range doc.Nftables {
		if o.Rule == nil || o.Rule.Comment != name {
			continue
		}
		for _, e := range o.Rule.Expr {
			if e.Counter != nil {
				return e.Counter.Packets
			}
		}
	}
	t.Fatalf("no counter %q in table %s: %s", name, table, out)
	return 0
}
