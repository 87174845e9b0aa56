package netagent

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/network/attach/netnstest"
	"github.com/shoal-project/shoal/network/lb/ipvs"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

func newTestAgent(t *testing.T, nodeID string, ns *netnstest.NS, dataAddr, backend string) *Agent {
	t.Helper()
	a, err := New(Config{
		NodeID:    nodeID,
		DataAddr:  netip.MustParseAddr(dataAddr),
		LBBackend: backend,
		StateDir:  t.TempDir(),
		NetNSPath: ns.Path,
		DNSPort:   kDNSPort,
		Upstreams: []string{},
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test-node", nodeID),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// TestKernelMeshAcrossNodes runs two nodes joined by an underlay veth. The
// only web task runs on n2; a client outside the cluster reaches it through
// n1's published port (DNAT and masquerade on n1, VXLAN to n2, the reply
// back to n1's ingress address), and a task on n1 resolves it. It runs with
// each load balancer backend; IPVS only where the kernel has it (the VM
// tier), where this is the test that failed with the VMs' published ports.
func TestKernelMeshAcrossNodes(t *testing.T) {
	t.Run(LBNFTables, func(t *testing.T) {
		netnstest.RequireKernel(t)
		meshAcrossNodes(t, LBNFTables)
	})
	t.Run(LBIPVS, func(t *testing.T) {
		lbtest.RequireIPVS(t, ipvs.Available())
		meshAcrossNodes(t, LBIPVS)
	})
}

func meshAcrossNodes(t *testing.T, backend string) {
	n1, n2, client := netnstest.New(t, "n1"), netnstest.New(t, "n2"), netnstest.New(t, "cli")
	netnstest.Link(t, n1, "ul0", "10.240.0.1/24", n2, "ul0", "10.240.0.2/24")
	netnstest.Link(t, n1, "cl0", "10.242.0.1/24", client, "eth0", "10.242.0.2/24")
	webNS, clientNS := netnstest.New(t, "web"), netnstest.New(t, "clt")

	ing := &api.Network{Id: "ing", Subnet: "10.250.0.0/24", Gateway: kIngressGW, Vni: 4260, Ingress: true}
	app := &api.Network{Id: "app", Subnet: "10.251.0.0/24", Gateway: kAppGW, Vni: 4261}
	web := ep("t1", "n2", "web", true, att("ing", "10.250.0.10/24"), att("app", "10.251.0.10/24"))
	clt := ep("c1", "n1", "client", true, att("app", "10.251.0.20/24"))
	delta := &api.NetworkDelta{
		Networks:  []*api.Network{ing, app},
		Peers:     []*api.NetworkPeer{peer("n1", "10.240.0.1", "10.250.0.2"), peer("n2", "10.240.0.2", "10.250.0.3")},
		Endpoints: []*api.NetworkEndpoint{web, clt},
		Services: []*api.ServiceEndpoint{
			svc("web", "web", "vip", []*api.PortConfig{
				port("tcp", 80, 8080, "", ""),
				port("tcp", 80, 9090, "ingress", "local"),
				port("tcp", 80, 9191, "host", ""),
			}, &api.EndpointVIP{NetworkId: "app", Addr: kVIP + "/24"}),
			svc("client", "client", "vip", nil),
		},
	}
	ctx := context.Background()
	a1, a2 := newTestAgent(t, "n1", n1, "10.240.0.1", backend), newTestAgent(t, "n2", n2, "10.240.0.2", backend)
	for _, a := range []*Agent{a1, a2} {
		if err := a.Apply(ctx, delta, true); err != nil {
			t.Fatalf("Apply on %s: %v", a.cfg.NodeID, err)
		}
	}
	if err := a2.Attach(ctx, taskOf(web), webNS.Path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a2.Detach(ctx, taskOf(web)) })
	if err := a1.Attach(ctx, taskOf(clt), clientNS.Path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a1.Detach(ctx, taskOf(clt)) })
	netnstest.Listen(t, webNS, ":80")

	t.Run("published port on a node without the task", func(t *testing.T) {
		if err := netnstest.Dial(client, "10.242.0.1:8080"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("published port on the task's own node", func(t *testing.T) {
		if err := netnstest.Dial(n2, "10.240.0.2:8080"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("traffic local and host mode only where the task runs", func(t *testing.T) {
		for _, p := range []string{"9090", "9191"} {
			if err := netnstest.Dial(client, "10.242.0.1:"+p); err == nil || !strings.Contains(err.Error(), "refused") {
				t.Errorf("port %s on n1, which runs no web task: %v, want connection refused", p, err)
			}
			if err := netnstest.Dial(n2, "10.240.0.2:"+p); err != nil {
				t.Errorf("port %s on n2, which runs the task: %v", p, err)
			}
		}
	})
	t.Run("task to task across the overlay", func(t *testing.T) {
		if err := netnstest.Dial(clientNS, "10.251.0.10:80"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("VIP to a task on another node", func(t *testing.T) {
		if a1.vipMasquerade {
			// docs/networking.md: masqueraded VIP traffic leaves from the
			// overlay's gateway address, the same on every node, so the
			// reply of a task on another node stays there.
			t.Skipf("with %s VIPs are masqueraded and reach only tasks on the same node", backend)
		}
		if err := netnstest.Dial(clientNS, kVIP+":80"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("DNS on the asking task's node", func(t *testing.T) {
		if got, want := dnsQuery(t, clientNS, kAppGW+":5354", "tasks.web"), "NOERROR 10.251.0.10"; got != want {
			t.Errorf("tasks.web: %q, want %q", got, want)
		}
	})
}
