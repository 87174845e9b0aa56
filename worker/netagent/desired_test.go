package netagent

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/network/ipam"
	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/overlay"
)

const self = "n1"

// The test cluster: three nodes, the ingress network and one overlay.
var (
	ingressNet = &api.Network{Id: "ing", Subnet: "10.255.0.0/16", Gateway: "10.255.0.1", Vni: 4096, Ingress: true}
	appNet     = &api.Network{Id: "app", Subnet: "10.0.1.0/24", Gateway: "10.0.1.1", Vni: 4097}
)

func peer(node, data, ingress string) *api.NetworkPeer {
	p := &api.NetworkPeer{NodeId: node, DataAddr: data}
	if ingress != "" {
		p.Ingress = &api.NetworkAttachment{NetworkId: "ing", Addr: ingress + "/16"}
	}
	return p
}

func att(network, addr string) *api.NetworkAttachment {
	p := netip.MustParsePrefix(addr)
	return &api.NetworkAttachment{NetworkId: network, Addr: addr, Mac: ipam.MACFromIP(p.Addr()).String()}
}

func ep(task, node, svc string, serving bool, atts ...*api.NetworkAttachment) *api.NetworkEndpoint {
	return &api.NetworkEndpoint{TaskId: task, NodeId: node, ServiceId: svc, Serving: serving, Networks: atts}
}

func svc(id, name, mode string, ports []*api.PortConfig, vips ...*api.EndpointVIP) *api.ServiceEndpoint {
	e := &api.Endpoint{Ports: ports, Vips: vips}
	for _, v := range vips {
		e.Networks = append(e.Networks, v.NetworkId)
	}
	return &api.ServiceEndpoint{ServiceId: id, Name: name, Mode: mode, Endpoint: e}
}

func port(proto string, target, published uint32, mode, traffic string) *api.PortConfig {
	return &api.PortConfig{Protocol: proto, Target: target, Published: published, Mode: mode, Traffic: traffic}
}

func be(s string) lb.Backend {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return lb.Backend{Addr: netip.MustParseAddr(s)}
	}
	return lb.Backend{Addr: ap.Addr(), Port: ap.Port()}
}

func bes(ss ...string) []lb.Backend {
	out := []lb.Backend{}
	for _, s := range ss {
		out = append(out, be(s))
	}
	return out
}

// baseDelta: web (2 serving tasks on n1, n2 and a stopping one on n3)
// publishes 8080→80 in the mesh and has a VIP on app.
func baseDelta() *api.NetworkDelta {
	return &api.NetworkDelta{
		Networks: []*api.Network{ingressNet, appNet},
		Peers: []*api.NetworkPeer{
			peer("n1", "192.168.0.1", "10.255.0.2"),
			peer("n2", "192.168.0.2", "10.255.0.3"),
			peer("n3", "192.168.0.3", "10.255.0.4"),
		},
		Endpoints: []*api.NetworkEndpoint{
			ep("t1", "n1", "web", true, att("ing", "10.255.0.10/16"), att("app", "10.0.1.10/24")),
			ep("t2", "n2", "web", true, att("ing", "10.255.0.11/16"), att("app", "10.0.1.11/24")),
			ep("t3", "n3", "web", false, att("ing", "10.255.0.12/16"), att("app", "10.0.1.12/24")),
			ep("c1", "n1", "client", true, att("app", "10.0.1.20/24")),
		},
		Services: []*api.ServiceEndpoint{
			svc("web", "web", "vip", []*api.PortConfig{port("tcp", 80, 8080, "", "")},
				&api.EndpointVIP{NetworkId: "app", Addr: "10.0.1.2/24"}),
			svc("client", "client", "vip", nil, &api.EndpointVIP{NetworkId: "app", Addr: "10.0.1.3/24"}),
		},
	}
}

func viewOf(deltas ...*api.NetworkDelta) *view {
	v := newView()
	for i, d := range deltas {
		v.merge(d, i == 0)
	}
	return v
}

func frontends(d *desired) map[string]lb.Frontend {
	m := map[string]lb.Frontend{}
	for _, f := range d.lb.Frontends {
		m[f.Name] = f
	}
	return m
}

func TestComputeLoadBalancer(t *testing.T) {
	vipTCP := func(svc, vip string, backends ...string) lb.Frontend {
		return lb.Frontend{Name: "vip:" + svc + ":app/tcp", Protocol: lb.TCP, VIP: netip.MustParseAddr(vip), Backends: bes(backends...)}
	}
	tests := []struct {
		name   string
		deltas []*api.NetworkDelta
		// want are the frontends checked; absent lists names that must not
		// exist.
		want   []lb.Frontend
		absent []string
	}{
		{
			name:   "ingress cluster balances to every serving task, masqueraded",
			deltas: []*api.NetworkDelta{baseDelta()},
			want: []lb.Frontend{
				{Name: "pub:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true, Backends: bes("10.255.0.10:80", "10.255.0.11:80")},
				vipTCP("web", "10.0.1.2", "10.0.1.10", "10.0.1.11"),
				{Name: "vip:web:app/udp", Protocol: lb.UDP, VIP: netip.MustParseAddr("10.0.1.2"), Backends: bes("10.0.1.10", "10.0.1.11")},
				vipTCP("client", "10.0.1.3", "10.0.1.20"),
			},
		},
		{
			name: "traffic local keeps only this node's tasks, unmasqueraded",
			deltas: []*api.NetworkDelta{baseDelta(), {Services: []*api.ServiceEndpoint{
				svc("web", "web", "vip", []*api.PortConfig{port("TCP", 80, 8080, "ingress", "local")}),
			}}},
			want: []lb.Frontend{{Name: "pub:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: bes("10.255.0.10:80")}},
			// The VIP went with the update.
			absent: []string{"vip:web:app/tcp", "vip:web:app/udp"},
		},
		{
			name: "traffic local on a node without a task refuses",
			deltas: []*api.NetworkDelta{baseDelta(), {
				Services:         []*api.ServiceEndpoint{svc("web", "web", "vip", []*api.PortConfig{port("tcp", 80, 8080, "", "local")})},
				RemovedEndpoints: []string{"t1"},
			}},
			want: []lb.Frontend{{Name: "pub:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: bes()}},
		},
		{
			name: "host mode only where a task runs",
			deltas: []*api.NetworkDelta{baseDelta(), {Services: []*api.ServiceEndpoint{
				svc("web", "web", "vip", []*api.PortConfig{port("udp", 53, 5353, "host", "")}),
			}}},
			want: []lb.Frontend{{Name: "pub:web:5353/udp", Protocol: lb.UDP, Port: 5353, Backends: bes("10.255.0.10:53")}},
		},
		{
			name: "host mode without a local task publishes nothing",
			deltas: []*api.NetworkDelta{baseDelta(), {
				Services:         []*api.ServiceEndpoint{svc("web", "web", "vip", []*api.PortConfig{port("udp", 53, 5353, "host", "")})},
				RemovedEndpoints: []string{"t1"},
			}},
			absent: []string{"pub:web:5353/udp"},
		},
		{
			name: "host mode task off ingress is reached on its first network",
			deltas: []*api.NetworkDelta{baseDelta(), {
				Services:  []*api.ServiceEndpoint{svc("web", "web", "vip", []*api.PortConfig{port("tcp", 80, 8000, "host", "")})},
				Endpoints: []*api.NetworkEndpoint{ep("t1", "n1", "web", true, att("app", "10.0.1.10/24"))},
			}},
			want: []lb.Frontend{{Name: "pub:web:8000/tcp", Protocol: lb.TCP, Port: 8000, Backends: bes("10.0.1.10:80")}},
		},
		{
			name: "a task that stops serving leaves every frontend",
			deltas: []*api.NetworkDelta{baseDelta(), {Endpoints: []*api.NetworkEndpoint{
				ep("t2", "n2", "web", false, att("ing", "10.255.0.11/16"), att("app", "10.0.1.11/24")),
			}}},
			want: []lb.Frontend{
				{Name: "pub:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true, Backends: bes("10.255.0.10:80")},
				vipTCP("web", "10.0.1.2", "10.0.1.10"),
			},
		},
		{
			name:   "no serving task keeps the frontend, empty",
			deltas: []*api.NetworkDelta{baseDelta(), {RemovedEndpoints: []string{"t1", "t2"}}},
			want: []lb.Frontend{
				{Name: "pub:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true, Backends: bes()},
				vipTCP("web", "10.0.1.2"),
			},
		},
		{
			name: "dnsrr has no VIP frontend",
			deltas: []*api.NetworkDelta{baseDelta(), {Services: []*api.ServiceEndpoint{
				svc("web", "web", "dnsrr", nil, &api.EndpointVIP{NetworkId: "app", Addr: "10.0.1.2/24"}),
			}}},
			absent: []string{"vip:web:app/tcp", "vip:web:app/udp", "pub:web:8080/tcp"},
		},
		{
			name:   "removed service is gone",
			deltas: []*api.NetworkDelta{baseDelta(), {RemovedServices: []string{"web"}}},
			absent: []string{"vip:web:app/tcp", "vip:web:app/udp", "pub:web:8080/tcp"},
			want:   []lb.Frontend{vipTCP("client", "10.0.1.3", "10.0.1.20")},
		},
		{
			name:   "VIP on a network not in the view is skipped",
			deltas: []*api.NetworkDelta{baseDelta(), {RemovedNetworks: []string{"app"}}},
			absent: []string{"vip:web:app/tcp", "vip:client:app/tcp"},
			want:   []lb.Frontend{{Name: "pub:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true, Backends: bes("10.255.0.10:80", "10.255.0.11:80")}},
		},
		{
			name:   "full delta replaces the view",
			deltas: []*api.NetworkDelta{baseDelta(), {Networks: []*api.Network{ingressNet}}},
		},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			v := newView()
			for i, d := range tt.deltas {
				full := i == 0 || tt.name == "full delta replaces the view"
				v.merge(d, full)
			}
			d := compute(v, self, false)
			for _, p := range d.problems {
				t.Errorf("problem: %v", p)
			}
			if err := lb.Validate(d.lb); err != nil {
				t.Errorf("invalid LB state: %v", err)
			}
			got := frontends(d)
			for _, w := range tt.want {
				g, ok := got[w.Name]
				if !ok {
					t.Errorf("frontend %s missing; have %v", w.Name, slices.Sorted(mapKeys(got)))
					continue
				}
				if !reflect.DeepEqual(g, w) {
					t.Errorf("frontend %s:\n got %+v\nwant %+v", w.Name, g, w)
				}
			}
			for _, n := range tt.absent {
				if _, ok := got[n]; ok {
					t.Errorf("frontend %s should not exist", n)
				}
			}
			if tt.name == "full delta replaces the view" && len(got) != 0 {
				t.Errorf("after a full delta with no service: frontends %v", slices.Sorted(mapKeys(got)))
			}
		})
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestComputeOverlays(t *testing.T) {
	d := compute(viewOf(baseDelta()), self, false)
	ip := netip.MustParseAddr
	mk := func(addr, vtep string) overlay.Endpoint {
		return overlay.Endpoint{Addr: ip(addr), MAC: ipam.MACFromIP(ip(addr)), VTEP: ip(vtep)}
	}
	peers := []overlay.Peer{{VTEP: ip("192.168.0.2")}, {VTEP: ip("192.168.0.3")}}
	want := []overlay.NetworkState{
		{
			Network: overlay.Network{ID: "app", VNI: 4097, Subnet: netip.MustParsePrefix("10.0.1.0/24"), Gateway: ip("10.0.1.1")},
			Peers:   peers,
			// Not serving still has an interface: t3 is listed.
			Endpoints: []overlay.Endpoint{mk("10.0.1.11", "192.168.0.2"), mk("10.0.1.12", "192.168.0.3")},
		},
		{
			Network:  overlay.Network{ID: "ing", VNI: 4096, Subnet: netip.MustParsePrefix("10.255.0.0/16"), Gateway: ip("10.255.0.1")},
			NodeAddr: ip("10.255.0.2"),
			Peers:    peers,
			Endpoints: []overlay.Endpoint{
				mk("10.255.0.3", "192.168.0.2"), mk("10.255.0.4", "192.168.0.3"),
				mk("10.255.0.11", "192.168.0.2"), mk("10.255.0.12", "192.168.0.3"),
			},
		},
	}
	if !reflect.DeepEqual(d.overlays, want) {
		t.Errorf("overlays:\n got %+v\nwant %+v", d.overlays, want)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("10.255.0.0/16")}; !slices.Equal(d.subnets, want) {
		t.Errorf("masqueraded subnets %v, want %v", d.subnets, want)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.0.1.1/24"), netip.MustParsePrefix("10.255.0.1/16")}; !slices.Equal(d.dnsAddrs, want) {
		t.Errorf("DNS addresses %v, want %v", d.dnsAddrs, want)
	}
	wantGuard := guardState{
		active:   true,
		peers:    []netip.Addr{ip("192.168.0.2"), ip("192.168.0.3")},
		gateways: []gatewayGuard{{ip("10.0.1.1"), "shb-4097"}, {ip("10.255.0.1"), "shb-4096"}},
	}
	if !reflect.DeepEqual(d.guard, wantGuard) {
		t.Errorf("guard %+v, want %+v", d.guard, wantGuard)
	}

	// An endpoint on a node without a peer entry has no VTEP: skipped. A
	// removed peer is no longer flooded to.
	d = compute(viewOf(baseDelta(), &api.NetworkDelta{RemovedPeers: []string{"n3"}}), self, false)
	for _, ns := range d.overlays {
		for _, e := range ns.Endpoints {
			if e.VTEP == ip("192.168.0.3") {
				t.Errorf("network %s: endpoint %s of a node without a peer entry", ns.ID, e.Addr)
			}
		}
		if !slices.Equal(ns.Peers, peers[:1]) {
			t.Errorf("network %s: peers %v, want %v", ns.ID, ns.Peers, peers[:1])
		}
	}
	if want := []netip.Addr{ip("192.168.0.2")}; !slices.Equal(d.guard.peers, want) {
		t.Errorf("guard peers after n3 left: %v, want %v", d.guard.peers, want)
	}

	// No overlay, no guard table: nothing of the node's VXLAN to keep.
	if d := compute(viewOf(&api.NetworkDelta{Peers: baseDelta().Peers}), self, false); d.guard.active || len(d.guard.peers) > 0 {
		t.Errorf("guard without networks: %+v, want none", d.guard)
	}
}

func TestComputeIsStable(t *testing.T) {
	a, b := compute(viewOf(baseDelta()), self, false), compute(viewOf(baseDelta()), self, false)
	a.dns, b.dns = nil, nil
	if !reflect.DeepEqual(a, b) {
		t.Error("two computations of one view differ")
	}
}

func TestComputeReportsBadItems(t *testing.T) {
	d := baseDelta()
	d.Networks = append(d.Networks, &api.Network{Id: "bad", Subnet: "nonsense", Gateway: "10.9.0.1", Vni: 5000})
	d.Services = append(d.Services, svc("clash", "clash", "vip", []*api.PortConfig{port("tcp", 80, 8080, "", "")}))
	got := compute(viewOf(d), self, false)
	var msgs []string
	for _, p := range got.problems {
		msgs = append(msgs, p.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"network bad: subnet", "already balanced by pub:clash:8080/tcp"} {
		if !strings.Contains(all, want) {
			t.Errorf("problems %q: want one containing %q", all, want)
		}
	}
	if err := lb.Validate(got.lb); err != nil {
		t.Errorf("a clash must not make the whole state invalid: %v", err)
	}
}

func TestLookup(t *testing.T) {
	d := baseDelta()
	d.Services = append(d.Services, svc("db", "DB", "dnsrr", nil))
	d.Services[len(d.Services)-1].Endpoint.Networks = []string{"app"}
	d.Endpoints = append(d.Endpoints,
		ep("d1", "n2", "db", true, att("app", "10.0.1.30/24")),
		ep("d2", "n3", "db", false, att("app", "10.0.1.31/24")),
		ep("lonely", "n1", "other", true, att("ing", "10.255.0.40/16")),
	)
	x := compute(viewOf(d), self, false).dns
	client := netip.MustParseAddr("10.0.1.20")
	tests := []struct {
		src, name string
		want      string // addresses joined by space, or "forward"
	}{
		{"10.0.1.20", "web", "10.0.1.2"},
		{"10.0.1.20", "WEB.", "10.0.1.2"},
		{"10.0.1.20", "tasks.web", "10.0.1.10 10.0.1.11"},
		{"10.0.1.20", "tasks.Web.", "10.0.1.10 10.0.1.11"},
		{"10.0.1.20", "db", "10.0.1.30"},
		{"10.0.1.20", "tasks.db", "10.0.1.30"},
		{"10.0.1.20", "example.com", "forward"},
		{"10.0.1.20", "tasks.nosuch", "forward"},
		// Not from a task: not ours.
		{"192.168.0.1", "web", "forward"},
		// On ingress only: shares no network with web (ingress does not count).
		{"10.255.0.40", "web", "forward"},
	}
	_ = client
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s_%s", tt.src, tt.name), func(t *testing.T) {
			addrs, ok := x.lookup(netip.MustParseAddr(tt.src), tt.name)
			got := "forward"
			if ok {
				var s []string
				for _, a := range addrs {
					s = append(s, a.String())
				}
				got = strings.Join(s, " ")
			}
			if got != tt.want {
				t.Errorf("lookup(%s, %q) = %q, want %q", tt.src, tt.name, got, tt.want)
			}
		})
	}
}

func TestComputeVIPMasquerade(t *testing.T) {
	for _, masq := range []bool{false, true} {
		for _, f := range compute(viewOf(baseDelta()), self, masq).lb.Frontends {
			if f.IsVIP() && f.Masquerade != masq {
				t.Errorf("vipMasquerade=%v: frontend %s has Masquerade=%v", masq, f.Name, f.Masquerade)
			}
			if !f.IsVIP() && !f.Masquerade {
				t.Errorf("vipMasquerade=%v: published frontend %s lost its masquerade", masq, f.Name)
			}
		}
	}
}

// TestComputeEncryptedNetwork: an encrypted network's VTEPs are the tunnel
// addresses of the nodes with a WireGuard key; the tunnel has those nodes
// as peers at their data addresses; a node without a key is left out, and
// its task on the network is reported; the ingress network never moves to
// the tunnel.
func TestComputeEncryptedNetwork(t *testing.T) {
	key := func(b byte) []byte {
		k := make([]byte, 32)
		k[0] = b
		return k
	}
	d := baseDelta()
	enc := &api.Network{Id: "app", Subnet: "10.0.1.0/24", Gateway: "10.0.1.1", Vni: 4097, Spec: &api.NetworkSpec{Encrypted: true}}
	ingEnc := &api.Network{Id: "ing", Subnet: "10.255.0.0/16", Gateway: "10.255.0.1", Vni: 4096, Ingress: true, Spec: &api.NetworkSpec{Encrypted: true}}
	d.Networks = []*api.Network{ingEnc, enc}
	d.Peers[0].WireguardKey = key(1) // n1, this node
	d.Peers[1].WireguardKey = key(2) // n2
	// n3 has no key; its task t3 is on app.
	got := compute(viewOf(d), self, false)

	var app, ing overlay.NetworkState
	for _, o := range got.overlays {
		switch o.ID {
		case "app":
			app = o
		case "ing":
			ing = o
		}
	}
	n2 := overlay.TunnelAddr("n2")
	if !app.Encrypted || !reflect.DeepEqual(app.Peers, []overlay.Peer{{VTEP: n2}}) {
		t.Errorf("encrypted network: encrypted %v, peers %v; want only n2's tunnel address %s", app.Encrypted, app.Peers, n2)
	}
	for _, e := range app.Endpoints {
		if e.VTEP != n2 {
			t.Errorf("encrypted network endpoint %s at VTEP %s; want only n2's (%s)", e.Addr, e.VTEP, n2)
		}
	}
	if len(app.Endpoints) != 1 || app.Endpoints[0].Addr != netip.MustParseAddr("10.0.1.11") {
		t.Errorf("encrypted network endpoints %v; want t2 (10.0.1.11) only", app.Endpoints)
	}
	if ing.Encrypted || len(ing.Peers) != 2 || !ing.Peers[0].VTEP.Is4() {
		t.Errorf("ingress: encrypted %v, peers %v; want the data addresses of n2 and n3, in the clear", ing.Encrypted, ing.Peers)
	}
	want := overlay.TunnelState{Active: true, Peers: []overlay.TunnelPeer{{
		Key: [32]byte(key(2)), Endpoint: netip.MustParseAddr("192.168.0.2"), Addr: n2,
	}}}
	if !reflect.DeepEqual(got.tunnel, want) {
		t.Errorf("tunnel %+v; want %+v", got.tunnel, want)
	}
	if !slices.ContainsFunc(got.problems, func(err error) bool {
		return strings.Contains(err.Error(), "t3") && strings.Contains(err.Error(), "no WireGuard key")
	}) {
		t.Errorf("problems %v; want one naming t3, whose node has no WireGuard key", got.problems)
	}

	// A bad key is reported and its node left out; without an encrypted
	// network there is no tunnel.
	d.Peers[1].WireguardKey = []byte("short")
	if got := compute(viewOf(d), self, false); len(got.tunnel.Peers) != 0 ||
		!slices.ContainsFunc(got.problems, func(err error) bool { return strings.Contains(err.Error(), "peer n2: WireGuard key") }) {
		t.Errorf("a 5-byte key: tunnel peers %v, problems %v", got.tunnel.Peers, got.problems)
	}
	if got := compute(viewOf(baseDelta()), self, false); got.tunnel.Active {
		t.Error("a tunnel without an encrypted network")
	}
}
