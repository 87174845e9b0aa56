package netagent

import (
	"net/netip"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/network/lb"
)

// FuzzCompute feeds the view whatever strings and numbers the managers
// might send: compute must not panic, must give the load balancer a state it
// accepts (a bad item is skipped, not the whole state), and lookups must not
// panic either.
func FuzzCompute(f *testing.F) {
	f.Add("10.0.1.0/24", "10.0.1.1", "10.0.1.10/24", "02:42:0a:00:01:0a", "10.0.1.2/24", "tcp", "ingress", "", uint32(80), uint32(8080), "web")
	f.Add("nonsense", "", "10.0.1.10", "zz", "::1", "sctp", "host", "local", uint32(0), uint32(70000), "tasks.web.")
	f.Add("fd00::/64", "fd00::1", "fd00::10/64", "", "fd00::2/64", "UDP", "", "cluster", uint32(53), uint32(53), "WEB")
	f.Fuzz(func(t *testing.T, subnet, gateway, addr, mac, vip, proto, mode, traffic string, target, published uint32, name string) {
		d := &api.NetworkDelta{
			Networks: []*api.Network{
				{Id: "ing", Subnet: subnet, Gateway: gateway, Vni: 1, Ingress: true},
				{Id: "app", Subnet: subnet, Gateway: gateway, Vni: 2},
			},
			Peers: []*api.NetworkPeer{
				{NodeId: "n1", DataAddr: gateway, Ingress: &api.NetworkAttachment{NetworkId: "ing", Addr: addr, Mac: mac}},
				{NodeId: "n2", DataAddr: "192.168.0.2", Ingress: &api.NetworkAttachment{NetworkId: "ing", Addr: vip}},
			},
			Endpoints: []*api.NetworkEndpoint{
				{TaskId: "t1", NodeId: "n1", ServiceId: "s", Serving: true, Networks: []*api.NetworkAttachment{
					{NetworkId: "ing", Addr: addr, Mac: mac}, {NetworkId: "app", Addr: vip}}},
				{TaskId: "t2", NodeId: "n2", ServiceId: "s", Serving: true, Networks: []*api.NetworkAttachment{
					{NetworkId: "app", Addr: addr}}},
			},
			Services: []*api.ServiceEndpoint{
				{ServiceId: "s", Name: name, Mode: mode, Endpoint: &api.Endpoint{
					Ports:    []*api.PortConfig{{Protocol: proto, Target: target, Published: published, Mode: mode, Traffic: traffic}},
					Vips:     []*api.EndpointVIP{{NetworkId: "app", Addr: vip}, {NetworkId: "ing", Addr: addr}},
					Networks: []string{"app"},
				}},
				{ServiceId: "s2", Name: name, Endpoint: &api.Endpoint{
					Ports: []*api.PortConfig{{Protocol: proto, Target: published, Published: target}},
					Vips:  []*api.EndpointVIP{{NetworkId: "app", Addr: vip}},
				}},
			},
		}
		for _, masq := range []bool{false, true} {
			got := compute(viewOf(d), "n1", masq)
			if err := lb.Validate(got.lb); err != nil {
				t.Fatalf("invalid load balancer state: %v", err)
			}
			for _, src := range []string{addr, vip, "10.0.1.10"} {
				if p, err := netip.ParsePrefix(src); err == nil {
					got.dns.lookup(p.Addr(), name)
				}
				if a, err := netip.ParseAddr(src); err == nil {
					got.dns.lookup(a, "tasks."+name)
				}
			}
		}
	})
}
